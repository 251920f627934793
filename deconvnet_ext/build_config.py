"""How the build chooses CUDA or not, the toolkit and the GPU architectures.

setup.py loads this file by path before torch's cpp_extension is imported (so it imports
nothing but the standard library), and ``deconvnet info`` reuses it to say what a build
on this machine would choose. The decisions are pure functions of facts (environment,
what torch says, what nvcc says) so the tests can feed them any machine.

Rules, in order:
- toolkit: ``CUDA_HOME``, else ``CUDA_PATH``, else where ``nvcc`` on PATH really lives
  (symlinks and wrapper scripts resolved: nvcc itself reports its directory), else
  ``/usr/local/cuda`` if it has an nvcc;
- CUDA or not: ``DECONVNET_EXT_CUDA=0`` never, ``=1`` always (every reason to fall back
  becomes an error); unset: CUDA when torch is a CUDA build, a toolkit is found and its
  CUDA major equals torch's, otherwise CPU-only with one warning saying why;
- architectures: ``TORCH_CUDA_ARCH_LIST`` if set; else the visible GPUs' own
  architectures; else (no GPU: a container or build host) every architecture the
  installed torch was built for that this nvcc can compile, PTX for the newest, so the
  build runs on every GPU torch runs on.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Tuple


class BuildConfigError(RuntimeError):
    """DECONVNET_EXT_CUDA=1 (or a bad value) asks for what cannot be built."""


@dataclass
class CudaChoice:
    with_cuda: bool
    reason: str
    cuda_home: Optional[str] = None
    arch_list: str = ""          # TORCH_CUDA_ARCH_LIST syntax, e.g. "8.0;9.0+PTX"
    arch_reason: str = ""
    warnings: list = field(default_factory=list)

    def summary(self) -> str:
        if not self.with_cuda:
            return f"CPU-only build: {self.reason}"
        return (f"CPU + CUDA build (toolkit {self.cuda_home}); architectures "
                f"{self.arch_list}: {self.arch_reason}")


def _run(cmd: Sequence[str]) -> Optional[str]:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def nvcc_home_from_dryrun(dryrun_output: str) -> Optional[str]:
    """The toolkit root from ``nvcc --dryrun``'s ``_HERE_=<bin dir>`` line."""
    match = re.search(r"^#\$ _HERE_=(.+)$", dryrun_output, re.M)
    return os.path.dirname(match.group(1).strip()) if match else None


def find_cuda_home(env: Mapping[str, str],
                   which: Callable[[str], Optional[str]] = shutil.which,
                   exists: Callable[[str], bool] = os.path.exists,
                   ask_nvcc: Callable[[str], Optional[str]] = None) -> Tuple[Optional[str], str]:
    """(toolkit root or None, how it was found)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return env[var], f"from {var}"
    nvcc = which("nvcc")
    if nvcc:
        ask_nvcc = ask_nvcc or _nvcc_home
        home = ask_nvcc(nvcc)
        if home:
            return home, f"from nvcc on PATH ({nvcc})"
        real = os.path.realpath(nvcc)
        return os.path.dirname(os.path.dirname(real)), f"from nvcc on PATH ({real})"
    if exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda", "the default /usr/local/cuda"
    return None, "no nvcc on PATH, CUDA_HOME and CUDA_PATH unset, no /usr/local/cuda"


def _nvcc_home(nvcc: str) -> Optional[str]:
    # nvcc may be a symlink or a wrapper script (here /usr/local/bin/nvcc execs the real
    # one): nvcc's own dry run names the directory it runs from.
    # (`--dryrun --version` prints no _HERE_ line; a dry compile of nothing does.)
    out = _run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
    home = nvcc_home_from_dryrun(out or "")
    return os.path.realpath(home) if home else None


def parse_nvcc_version(text: str) -> Optional[Tuple[int, int]]:
    match = re.search(r"release (\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_nvcc_archs(text: str) -> list:
    """``nvcc --list-gpu-arch`` lines (compute_90, ...) -> ["9.0", ...]."""
    archs = []
    for major_minor in re.findall(r"compute_(\d+)", text or ""):
        archs.append(f"{int(major_minor) // 10}.{int(major_minor) % 10}")
    return archs


def _arch_key(arch: str) -> Tuple[int, int]:
    major, minor = arch.split(".")
    return int(major), int(re.match(r"\d+", minor).group(0))


def torch_archs_as_versions(torch_arch_list: Sequence[str]) -> list:
    """torch.cuda.get_arch_list() entries (sm_90, compute_90, sm_90a) -> ["9.0", ...]."""
    out = set()
    for entry in torch_arch_list:
        match = re.fullmatch(r"(?:sm|compute)_(\d+)[a-z]?", entry)
        if match:
            number = int(match.group(1))
            out.add(f"{number // 10}.{number % 10}")
    return sorted(out, key=_arch_key)


def choose_arch_list(env_arch: Optional[str], visible_capabilities: Sequence[Tuple[int, int]],
                     torch_arch_list: Sequence[str],
                     nvcc_archs: Sequence[str]) -> Tuple[str, str]:
    """(TORCH_CUDA_ARCH_LIST value, why)."""
    if env_arch and env_arch.strip():
        return env_arch.strip(), "TORCH_CUDA_ARCH_LIST is set"
    if visible_capabilities:
        archs = sorted({f"{major}.{minor}" for major, minor in visible_capabilities},
                       key=_arch_key)
        return ";".join(archs), "the visible GPU's architecture (set TORCH_CUDA_ARCH_LIST for others)"
    wanted = torch_archs_as_versions(torch_arch_list)
    compilable = set(nvcc_archs)
    archs = [a for a in wanted if not compilable or a in compilable]
    dropped = [a for a in wanted if a not in archs]
    if not archs:
        raise BuildConfigError(
            f"no GPU is visible and none of torch's architectures {wanted or 'none'} can be "
            f"compiled by this nvcc (it knows {sorted(compilable, key=_arch_key)}); set "
            "TORCH_CUDA_ARCH_LIST")
    why = "no GPU visible: every architecture the installed torch supports"
    if dropped:
        why += f" that this nvcc compiles (not {', '.join(dropped)})"
    archs[-1] += "+PTX"
    return ";".join(archs), why + ", PTX for the newest"


def decide(env: Mapping[str, str], torch_cuda_version: Optional[str],
           cuda_home: Optional[str], home_how: str,
           nvcc_version: Optional[Tuple[int, int]]) -> Tuple[bool, str]:
    """(build the CUDA kernels?, why). Raises BuildConfigError when DECONVNET_EXT_CUDA=1
    asks for what cannot be built."""
    flag = env.get("DECONVNET_EXT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise BuildConfigError(f"DECONVNET_EXT_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "DECONVNET_EXT_CUDA=0"
    problem = None
    if torch_cuda_version is None:
        problem = "the installed torch is not a CUDA build"
    elif cuda_home is None:
        problem = f"no CUDA toolkit found ({home_how})"
    elif nvcc_version is None:
        problem = f"no working nvcc under {cuda_home} ({home_how})"
    else:
        torch_major = int(torch_cuda_version.split(".")[0])
        if nvcc_version[0] != torch_major:
            problem = (f"the toolkit at {cuda_home} is CUDA {nvcc_version[0]}.{nvcc_version[1]} "
                       f"but torch was built with CUDA {torch_cuda_version}")
    if problem is None:
        return True, f"torch CUDA {torch_cuda_version}, nvcc {nvcc_version[0]}.{nvcc_version[1]}"
    if flag == "1":
        raise BuildConfigError(f"DECONVNET_EXT_CUDA=1 but the CUDA kernels cannot be built: "
                               f"{problem}")
    return False, (f"{problem}; set CUDA_HOME to a matching toolkit and "
                   "DECONVNET_EXT_CUDA=1 to force the CUDA kernels")


def torch_build_archs(torch_module) -> list:
    """The architectures torch was compiled for. torch.cuda.get_arch_list() answers []
    without a visible GPU in some versions; the build flags behind it do not."""
    archs = list(torch_module.cuda.get_arch_list())
    if not archs:
        flags = getattr(torch_module._C, "_cuda_getArchFlags", lambda: None)()
        archs = flags.split() if flags else []
    return archs


def choose(env: Mapping[str, str], torch_module) -> CudaChoice:
    """The whole decision on this machine, for setup.py and ``deconvnet info``."""
    cuda_home, how = find_cuda_home(env)
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    nvcc_version = parse_nvcc_version(_run([nvcc, "--version"])) if nvcc else None
    with_cuda, reason = decide(env, torch_module.version.cuda, cuda_home, how, nvcc_version)
    choice = CudaChoice(with_cuda=with_cuda, reason=reason, cuda_home=cuda_home)
    if not with_cuda:
        if env.get("DECONVNET_EXT_CUDA", "").strip() != "0" and torch_module.version.cuda:
            choice.warnings.append(f"deconvnet_ext: WARNING: building without CUDA: {reason}")
        return choice
    capabilities = []
    if torch_module.cuda.is_available():
        capabilities = [torch_module.cuda.get_device_capability(i)
                        for i in range(torch_module.cuda.device_count())]
    nvcc_archs = parse_nvcc_archs(_run([nvcc, "--list-gpu-arch"]) or "")
    choice.arch_list, choice.arch_reason = choose_arch_list(
        env.get("TORCH_CUDA_ARCH_LIST"), capabilities, torch_build_archs(torch_module),
        nvcc_archs)
    return choice


def arch_list_covers(arch_list: str, capability: Tuple[int, int]) -> Tuple[bool, str]:
    """Can a build for ``arch_list`` (TORCH_CUDA_ARCH_LIST syntax) run on a GPU of this
    compute capability? A cubin runs on its own major at an equal or newer minor; PTX is
    JIT-compiled for any newer GPU. (covered?, how)."""
    major, minor = capability
    best = None
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        match = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", entry)
        if not match:
            continue
        e_major, e_minor = int(match.group(1)), int(match.group(2))
        if (e_major, e_minor) == (major, minor):
            return True, f"sm_{major}{minor} binary"
        if e_major == major and e_minor < minor and not match.group(3):
            best = best or f"sm_{e_major}{e_minor} binary (same major)"
        if match.group(4) and (e_major, e_minor) <= (major, minor):
            best = best or f"compute_{e_major}{e_minor} PTX, JIT-compiled at first use"
    return (True, best) if best else (False, f"no binary or PTX for sm_{major}{minor}")
