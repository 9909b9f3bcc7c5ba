"""Data sets as webdataset shards plus a manifest, on a file system or S3, and their readers.

Modules: ``source`` / ``sources`` / ``paper_sets`` (the data sets and their canonical downloads),
``writer`` (shards + manifest), ``manifest`` (the format), ``reader`` (one reader for training and
evaluation, equal batch counts on every rank; ``epoch_plan`` shares an epoch out, ``shard_blocks``
reads the bytes), ``transforms`` (stored values -> bfn_core's conventions; ``text`` for symbol ids),
``storage`` (paths, file:// and s3:// URLs, checkpoint locations; ``urls`` parses them, ``s3`` holds
the one S3 configuration), ``localserver`` (a loopback S3-compatible server for tests and benchmarks).

Import the modules themselves: the package re-exports nothing, so `import pipelines.data.sources`
does not pay for torch and webdataset.
"""
