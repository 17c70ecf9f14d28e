"""``optpipe build --help`` in sections, with examples, as Optimum's and Polygraphy's help reads.

Forty flat options are hard to scan; a reader looks for "the INT8 options" or
"what makes CI fail". :class:`SectionedCommand` groups the options by their
parameter name into the sections below (any option not listed lands in
"Other options", so a new option is never hidden), then prints the examples.
"""

from __future__ import annotations

import click

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Model and inputs", ("out_dir", "weights", "inputs", "dynamics", "output_names", "no_strict_weights",
                          "trust_pickle", "exporter", "opset")),
    ("Precision and calibration", ("target", "precision", "calib_data", "synthetic_calib", "calib_method",
                                   "calib_cache", "guard_max_keep", "no_guard", "guard_seconds", "max_rss")),
    ("Gates", ("tolerances", "output_kinds", "require_judged", "eval_data", "max_accuracy_drop")),
    ("Benchmark and profile", ("threads", "benchmark_batch", "no_benchmark", "bench_seconds", "warmup", "iterations",
                               "profile")),
    ("TensorRT (--target tensorrt)", ("timing_cache", "opt_level", "workspace", "hardware_compat",
                                      "version_compatible")),
    ("Output and CI", ("overwrite", "as_json", "junit", "config_file", "no_cache", "cache_dir", "mlflow_uri")),
)

BUILD_EXAMPLES = """\
  # the digits sample for CPU, FP32 and INT8, with a dynamic batch
  optpipe build sample_models/digits_cnn.py:DigitsCNN \\
      --weights sample_models/weights/digits_cnn.safetensors \\
      --dynamic batch=1:8:64 --precision fp32,int8 --out build/digits

  # pick the fastest variant that passes its gates; JUnit for CI; log to MLflow
  optpipe build model.py:Net --precision auto --out build/net --junit gates.xml --mlflow=sqlite:///mlflow.db

  # a transformer: two inputs, a named sequence axis, a looser INT8 gate
  optpipe build enc.py:Encoder --input ids:2x128:int64:0..1000 --input mask:2x128:int64:0..2 \\
      --dynamic seq=1:64:128@ids.1,mask.1 --precision int8 --tolerance logits:min_cosine=0.98 --out build/enc

  # every model of a config file, one JSON document on stdout
  optpipe build -c optpipe.toml --json > reports.json

  # TensorRT on a CPU machine: everything but the engine, exit 3; then on the GPU machine
  optpipe build model.py:Net --target tensorrt --precision fp16 --out build/trt
  optpipe engine build/trt"""


class SectionedCommand(click.Command):
    """A click command whose options are listed in :data:`SECTIONS`, followed by ``examples``."""

    examples: str = ""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx) if isinstance(p, click.Option)}
        placed: set[str | None] = set()
        for title, names in SECTIONS:
            rows = [records[n] for n in names if records.get(n)]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl([r for r in rows if r is not None])
        rest = [r for name, r in records.items() if name not in placed and r is not None]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples.splitlines():
                    formatter.write((" " * formatter.current_indent + line).rstrip() + "\n")
        super().format_epilog(ctx, formatter)


class BuildCommand(SectionedCommand):
    examples = BUILD_EXAMPLES
