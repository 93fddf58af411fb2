"""TensorRT plugins (time-group scale switching); built only where TensorRT is present."""
