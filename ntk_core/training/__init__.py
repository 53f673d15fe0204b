"""One run, step by step: the trainer, the measurer it calls at every measured step, the log
buffer the steps go into and that log's file format, and training in a child process."""
