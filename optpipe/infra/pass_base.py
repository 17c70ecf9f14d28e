"""The ``Pass`` base class and the context passes run in.

Borrowed from onnx-ir's pass infrastructure: ``__call__`` runs
``requires -> run -> ensures`` and re-raises any failure as a
:class:`~optpipe.core.errors.PassError` naming the pass, so a user sees *which*
stage broke. Optional hooks are no-ops, so a simple pass writes only ``run``.
Each pass has a frozen ``Config`` dataclass whose fields are its documented
options; the config is part of the cache key (issue: content-addressed cache).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.console import info
from optpipe.core.errors import OptpipeError, PassError
from optpipe.core.tensor_spec import DynamicDim, TensorSpec

if TYPE_CHECKING:  # torch is heavy and optional at import time
    from optpipe.compare.golden import GoldenData
    from optpipe.runtime.target import Target


@dataclass
class BuildContext:
    """Everything a pass may read besides its input artifact.

    Passed explicitly (no global "current build"), as TVM's PassContext is.
    ``work_dir`` is the staging directory of this build: passes write there and
    the build renames it to the output directory only when it completes.
    """

    work_dir: Path
    target: Target
    input_specs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    dynamic: tuple[DynamicDim, ...] = ()
    model: Any = None  # torch.nn.Module; Any so this module never imports torch
    example_inputs: tuple[Any, ...] = ()
    golden: GoldenData | None = None
    # What computes each output in the exported FP32 graph (optpipe.onnx.producers): evidence for its kind,
    # so a default-named `output_0` [N, 1000] made by a final Gemm is judged as class scores.
    output_producers: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    log: Callable[[str], None] = info
    # Reuse validation and benchmark results measured under exactly the same conditions (--rebench: False).
    reuse_measurements: bool = True
    # What a pass computed once for several variants of this build, by the pass's own key (fuse-transformer:
    # both fused variants fuse the same simplified graph with the same config, so the second reuses the first).
    shared: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def path(self, *parts: str) -> Path:
        """A path inside the staging directory, with parent folders created."""
        target = self.work_dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


#: ``field(metadata=NOT_IN_KEY)``: a Config field left out of :meth:`Pass.config_dict` (so out of reports and
#: cache keys) because it is data keyed by content elsewhere (``cache_facts``) or only saves work.
NOT_IN_KEY = {"cache_key": False}


@dataclass
class PassResult:
    """What a pass returns: the new artifact plus what the report should show."""

    artifact: Artifact
    modified: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Set when the pass skipped its variant (it raised VariantSkipped with this reason; ``artifact`` is
    # then its input): how the pass cache stores and replays a skip, so a warm rebuild does not rerun it.
    skipped: str | None = None


@dataclass(frozen=True)
class NoConfig:
    """Config of a pass that has no options."""


class Pass(ABC):
    """One named, typed step of a build.

    Subclasses set ``name``, ``description``, ``input_kind``, ``output_kind``,
    optionally ``Config`` (a frozen dataclass), and implement :meth:`run`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    input_kind: ClassVar[ArtifactKind]
    output_kind: ClassVar[ArtifactKind]
    Config: ClassVar[type] = NoConfig
    # Distributions whose versions change this pass's output (part of the cache key).
    uses: ClassVar[tuple[str, ...]] = ()
    # True for deterministic passes whose only effect is files in the staging dir plus the
    # returned result: optpipe.cache.store.PassCache may then skip them. Passes that measure stay False.
    cacheable: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {config!r}")

    def config_dict(self) -> dict[str, Any]:
        """The config as plain data, for reports and cache keys (fields marked NOT_IN_KEY left out)."""
        return {
            f.name: copy.deepcopy(getattr(self.config, f.name))
            for f in dataclasses.fields(self.config)
            if f.metadata.get("cache_key", True)
        }

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """Modules besides the pass's own file whose code decides its output.

        :class:`optpipe.cache.store.PassCache` hashes their source into the key, so
        editing a helper a pass calls invalidates that pass's entries. Each pass
        names its own helpers: the cache knows none of them.
        """
        return ()

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """Facts besides input, config and ``uses`` versions that change the output (e.g. a GPU name)."""
        return {}

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:  # noqa: B027  (optional hook: no-op)
        """Pre-condition hook; raise to refuse the input."""

    @abstractmethod
    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        """Do the work and return the new artifact."""

    def ensures(self, result: PassResult, ctx: BuildContext) -> None:  # noqa: B027  (optional hook: no-op)
        """Post-condition hook; raise to reject the output."""

    def __call__(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        if artifact.kind is not self.input_kind:
            raise PassError(
                self.name,
                TypeError(f"expects a {self.input_kind.value} artifact, got {artifact.kind.value}"),
            )
        try:
            self.requires(artifact, ctx)
            result = self.run(artifact, ctx)
            if result.artifact.kind is not self.output_kind:
                raise TypeError(
                    f"declared output kind {self.output_kind.value}, produced {result.artifact.kind.value}"
                )
            self.ensures(result, ctx)
        except PassError:
            raise
        except (OptpipeError, Exception) as error:  # every failure names the pass
            raise PassError(self.name, error) from error
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
