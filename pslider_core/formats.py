"""File formats the generation library writes, as plain data: the command lines' choices, without torch."""

VIDEO_FORMATS = ("mp4", "gif")
