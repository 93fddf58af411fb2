"""Resolve the project's TensorRT uses (JSON on stdin, from trt_usage.py) against the `tensorrt`
importable in this process; print one JSON document: the version and each use's verdict.

Run by the tests in a subprocess per TensorRT version (trt_wheels.Bindings.run_json). A use is
resolved step by step on the real module: attributes must exist on the module, class or enum;
a call must fit one of the signatures the bindings declare (pybind11 docstrings, or
inspect.signature for the pure-Python tensorrt.plugin) with the positional count and keyword
names used; a call's declared return type types the next step. A chain whose next type is not
declared (an int, a buffer, a project helper) ends there as resolved as far as it can be.
"""
from __future__ import annotations

import inspect
import json
import re
import sys

import tensorrt as trt

try:
    import tensorrt.plugin as trtp
except ImportError:  # TensorRT < 10.7 has no tensorrt.plugin
    trtp = None

# Declared return types the docstrings spell in C++ (11.x: "detail::accessor<...>"): the class meant.
RETURN_HINTS = {"get_plugin_registry": "IPluginRegistry"}
SIGNATURE = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\) -> (.+)$")


def split_params(text: str) -> list[str]:
    """Top-level comma split of a pybind11 parameter list (types nest [], (), <>)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def signatures(obj, name: str) -> list[tuple[list[tuple[str, bool]], str, bool]]:
    """[(params [(name, has_default)] without self, return type text, variadic)] from a pybind11 docstring."""
    sigs = []
    for line in (getattr(obj, "__doc__", None) or "").splitlines():
        m = SIGNATURE.match(line.strip())
        if not m or m[1] != name:
            continue
        params = split_params(m[2])
        if params == ["*args", "**kwargs"]:
            continue  # the header line of an overloaded function; its overloads follow
        parsed, variadic = [], False
        for p in params[1:] if params and (params[0].startswith("self") or params[0].startswith("arg0")) else params:
            if p.startswith("*"):
                variadic = True
                continue
            parsed.append((p.split(":")[0].split("=")[0].strip(), "=" in p))
        sigs.append((parsed, m[3].strip(), variadic))
    return sigs


def fits(params: list[tuple[str, bool]], variadic: bool, npos: int | None, kws: list[str]) -> bool:
    if npos is None:
        return True  # a starred call: arity not known statically
    names = [n for n, _ in params]
    if npos > len(params) and not variadic:
        return False
    if any(k not in names[npos:] for k in kws) and not variadic:
        return False
    given = set(names[:npos]) | set(kws)
    return all(n in given for n, has_default in params if not has_default)


def declared_class(return_text: str):
    """The tensorrt class a declared return type names, or None (int, bool, buffers, ...)."""
    text = re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", return_text)
    last = text.split(".")[-1]
    value = getattr(trt, last, None)
    return value if inspect.isclass(value) else None


def is_pybind(obj) -> bool:
    return type(obj).__name__ in ("builtin_function_or_method", "instancemethod", "pybind11_type") or \
        type(type(obj)).__name__ == "pybind11_type"


def resolve(use: dict) -> dict:
    root = trt if use["root"] == "trt" else trtp
    if root is None:
        return {"verdict": "missing", "why": "tensorrt.plugin does not exist in this version"}
    obj, kind, label = root, "module", use["root"]
    for step in use["steps"]:
        if step[0] == "inst":
            kind = "instance"
            continue
        if step[0] == "attr":
            name = step[1]
            holder = obj
            if kind == "module":
                if not hasattr(obj, name):
                    return {"verdict": "missing", "why": f"{label} has no attribute {name!r}"}
                value = getattr(obj, name)
            else:
                cls = obj
                member = inspect.getattr_static(cls, name, None)
                if member is None and not hasattr(cls, name):
                    return {"verdict": "missing", "why": f"{label} has no attribute {name!r}"}
                value = member if member is not None else getattr(cls, name)
                if isinstance(value, property):
                    if kind != "instance":
                        return {"verdict": "ok", "resolved_to": f"{label}.{name} (property)"}
                    sig = signatures(value.fget, "") or []
                    doc = (value.fget.__doc__ or "").strip().splitlines()
                    ret = doc[0].split("->")[-1].strip() if doc and "->" in doc[0] else ""
                    nxt = declared_class(ret)
                    if nxt is None:
                        return {"verdict": "ok", "resolved_to": f"{label}.{name} -> {ret or '?'}"}
                    obj, kind, label = nxt, "instance", nxt.__name__
                    continue
            label = f"{label}.{name}"
            if inspect.isclass(value):
                obj, kind = value, "class"
            elif callable(value):
                obj, kind = (holder, value), "callable"
            else:  # an enum member or constant
                obj, kind = type(value), "instance"
            continue
        # a call
        npos, kws = step[1], list(step[2])
        if kind == "class":
            cls = obj
            if is_pybind(cls) and cls.__module__.startswith("tensorrt"):
                sigs = signatures(cls.__init__, "__init__")
                if sigs and not any(fits(p, v, npos, kws) for p, _, v in sigs):
                    return {"verdict": "arity", "why": f"{label}({npos} positional, {kws}) fits none of "
                                                       f"{[[n for n, _ in p] for p, _, _ in sigs]}"}
            else:
                try:
                    inspect.signature(cls).bind(*[None] * (npos or 0), **{k: None for k in kws})
                except TypeError as err:
                    return {"verdict": "arity", "why": f"{label}: {err}"}
                except ValueError:
                    pass
            kind = "instance"
            continue
        if kind != "callable":
            return {"verdict": "ok", "resolved_to": f"{label} (called; not typed further)"}
        holder, fn = obj
        name = label.split(".")[-1]
        sigs = signatures(fn, name)
        if sigs:
            if not any(fits(p, v, npos, kws) for p, _, v in sigs):
                return {"verdict": "arity", "why": f"{label}({npos} positional, keywords {kws}) fits none of "
                                                   f"{[[n for n, _ in p] for p, _, _ in sigs]}"}
            rets = [declared_class(r) for p, r, v in sigs if fits(p, v, npos, kws)]
            nxt = next((r for r in rets if r is not None), None) or (
                declared_class(RETURN_HINTS[name]) if name in RETURN_HINTS else None)
            if nxt is None:
                return {"verdict": "ok", "resolved_to": f"{label}(...) -> {sigs[0][1]}"}
            obj, kind, label = nxt, "instance", nxt.__name__
            continue
        try:  # a pure-Python function (tensorrt.plugin)
            inspect.signature(fn).bind(*[None] * (npos or 0), **{k: None for k in kws})
        except TypeError as err:
            return {"verdict": "arity", "why": f"{label}: {err}"}
        except ValueError:
            pass
        return {"verdict": "ok", "resolved_to": f"{label}(...) (Python; not typed further)"}
    return {"verdict": "ok", "resolved_to": label}


def applies(guard: list) -> bool:
    """Whether code under `guard` runs with this TensorRT version."""
    kind = guard[0]
    major = int(trt.__version__.split(".")[0])
    if kind == "major>=":
        return major >= guard[1]
    if kind == "major<":
        return major < guard[1]
    if kind == "module":
        return guard[1] != "tensorrt.plugin" or trtp is not None
    owner = resolve({"root": guard[1], "steps": guard[2]})
    if owner["verdict"] != "ok":
        return False
    exists = resolve({"root": guard[1], "steps": guard[2] + [["attr", guard[3]]]})["verdict"] == "ok"
    return exists if kind == "has" else not exists


def main() -> None:
    uses = json.load(sys.stdin)
    verdicts = []
    for use in uses:
        if not all(applies(g) for g in use["guards"]):
            verdicts.append({"verdict": "not-run", "why": "guarded away in this version"})
        else:
            verdicts.append(resolve(use))
    print(json.dumps({"version": trt.__version__, "plugin": trtp is not None, "verdicts": verdicts}))


if __name__ == "__main__":
    main()
