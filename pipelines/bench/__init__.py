"""`imgsearch bench`: how fast image features are extracted (and fetched), on generated images.

command.py is the command (flags, the run, the rows); images.py the cached sets of generated
images; phases.py the three measured phases and the machine's description; harness.py runs a
phase in a child process of its own; results.py the result and its tables; fetch.py the fetch phase.
"""
