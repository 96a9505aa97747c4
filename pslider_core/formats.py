"""File formats and dtypes as plain data: the command lines' choices, without torch."""

VIDEO_FORMATS = ("mp4", "gif")
TORCH_DTYPES = ("float32", "float16", "bfloat16")  # model dtypes the command lines take, by torch's names
