"""Models that misbehave on purpose, for the hostile-input suite (loaded by path through the CLI)."""

import os
import signal
import time

import torch
from torch import nn


class Mlp(nn.Module):
    """A small, well-behaved model (the baseline the other models break)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class SwallowsInterrupt(Mlp):
    """Ctrl-C arrives during the dynamo export and code in between turns it into an ordinary error.

    Before issue 10 the exporter's failure handling then fell back to TorchScript and published a
    PASSED build.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                raise RuntimeError("swallowed the interrupt") from None
        return self.fc(x)


class ExitsDuringExport(Mlp):
    """Calls sys.exit(7) while being exported (before issue 10: exit 7 and no message)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            raise SystemExit(7)
        return self.fc(x)


class ExitsInInit(nn.Module):
    """Calls sys.exit(7) in __init__."""

    def __init__(self) -> None:
        raise SystemExit(7)


class FlattenCnn(nn.Module):
    """Conv -> flatten -> Linear: the spatial size cannot vary, whatever --dynamic says."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class PoolCnn(FlattenCnn):
    """Conv -> global mean -> Linear: the spatial size really is dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
