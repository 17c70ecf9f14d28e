"""The ``optpipe`` command line: thin click commands over the library."""
