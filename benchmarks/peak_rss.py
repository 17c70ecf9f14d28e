"""The peak RSS of a build run as a subprocess of a benchmark harness, measured right.

The build runs under a small wrapper, and its peak RSS is read from RUSAGE_CHILDREN there.
Reading ru_maxrss of our own child would be wrong: Linux carries the high-water RSS of the process
that forks (a harness that has loaded torch and models) into the child's ru_maxrss across exec, so
the first run of benchmarks/real_models.py reported MiniLM's build at 8.5 GiB while /usr/bin/time
measured 1.4 GiB. Used by real_models.py and scale.py (run from this folder, which Python puts first
on the import path).
"""

PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)
