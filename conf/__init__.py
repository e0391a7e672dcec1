"""memos_lab's Hydra configs: the folder stays at the repository's top level and ships as `memos_lab.conf`."""
