"""Energy a run used, where the hardware reports it; "not measured" otherwise (never an estimate).

Two counters are read, both cumulative energy counters kept by the hardware:

* RAPL (Intel/AMD CPUs on Linux): ``/sys/class/powercap/intel-rapl:N/energy_uj`` of every package domain,
  in microjoules, wrapping at ``max_energy_range_uj``; readable only where the kernel exposes it and the
  process may read it (often root only);
* NVML (NVIDIA GPUs): ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded, Volta
  and later), only if the ``pynvml`` package can be imported; it is not a dependency.

:class:`EnergyMeter` reads every available counter at :meth:`~EnergyMeter.start` and
:meth:`~EnergyMeter.stop`; the difference is the energy of the machine's packages and GPUs over that
time, including other processes' use (the counters are per device, not per process).
"""

from __future__ import annotations

import glob
import os
from typing import Callable

#: Where the kernel exposes RAPL (a module attribute so tests can point it at a fake tree).
POWERCAP_ROOT = "/sys/class/powercap"
NOT_MEASURED = "not measured"


def _rapl_domains() -> list[str]:
    """Package-level RAPL domains (``intel-rapl:0``, ``intel-rapl:1``; not their sub-domains) readable here."""
    domains = []
    for path in sorted(glob.glob(os.path.join(POWERCAP_ROOT, "intel-rapl:*"))):
        if ":" in os.path.basename(path).split("intel-rapl:", 1)[1]:
            continue  # a sub-domain (core, uncore, dram) is counted inside its package
        if os.access(os.path.join(path, "energy_uj"), os.R_OK):
            domains.append(path)
    return domains


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _nvml_reader() -> Callable[[], float] | None:
    """A function giving the total GPU energy in joules via NVML, or None (no pynvml, no GPU, no counter)."""
    try:
        import pynvml  # noqa: PLC0415 - optional, probed lazily
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return None
        for h in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except Exception:  # NVMLError of many kinds: no driver, counter not supported
        return None
    return lambda: sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1000.0


class EnergyMeter:
    """Energy between :meth:`start` and :meth:`stop`, in joules, from every counter available."""

    def __init__(self) -> None:
        self.domains = _rapl_domains()
        self.nvml = _nvml_reader()
        self._start: dict[str, float] = {}

    @property
    def sources(self) -> list[str]:
        return (["rapl"] if self.domains else []) + (["nvml"] if self.nvml else [])

    def _read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for domain in self.domains:
            value = _read_int(os.path.join(domain, "energy_uj"))
            if value is not None:
                values[domain] = float(value)
        if self.nvml is not None:
            values["nvml"] = self.nvml()
        return values

    def start(self) -> "EnergyMeter":
        self._start = self._read()
        return self

    def stop(self) -> tuple[float | None, str]:
        """``(joules, source)``: None and ``"not measured"`` where no counter is available."""
        end = self._read()
        total, used = 0.0, []
        for key, first in self._start.items():
            if key not in end:
                continue
            if key == "nvml":
                total += end[key] - first
            else:
                delta = end[key] - first
                if delta < 0:  # the counter wrapped around
                    delta += float(_read_int(os.path.join(key, "max_energy_range_uj")) or 0)
                total += delta / 1e6
            used.append("nvml" if key == "nvml" else "rapl")
        if not used:
            return None, NOT_MEASURED
        return total, "+".join(sorted(set(used)))
