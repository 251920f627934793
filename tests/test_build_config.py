"""The build's CUDA / toolkit / architecture choice, fed fake machines.

deconvnet_ext/build_config.py is pure functions of facts (environment, torch, nvcc), so
every machine a user may build on can be described here without having it.
"""
import types

import pytest

from deconvnet_ext import build_config as bc

TORCH_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
NVCC_13_ARCHS = ["7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "11.0", "12.0", "12.1"]


def fake_torch(cuda="13.0", archs=TORCH_ARCHS, capabilities=()):
    cuda_mod = types.SimpleNamespace(
        get_arch_list=lambda: list(archs),
        is_available=lambda: bool(capabilities),
        device_count=lambda: len(capabilities),
        get_device_capability=lambda i: capabilities[i])
    return types.SimpleNamespace(version=types.SimpleNamespace(cuda=cuda), cuda=cuda_mod,
                                 _C=types.SimpleNamespace())


def test_no_gpu_builds_for_every_arch_torch_supports_with_ptx_for_the_newest():
    arch, why = bc.choose_arch_list(None, [], TORCH_ARCHS, NVCC_13_ARCHS)
    assert arch == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert "no GPU visible" in why


def test_no_gpu_drops_archs_this_nvcc_cannot_compile_and_says_so():
    arch, why = bc.choose_arch_list(None, [], ["sm_50", "sm_60", "sm_90"], ["7.5", "9.0"])
    assert arch == "9.0+PTX"
    assert "not 5.0, 6.0" in why


def test_no_compilable_arch_is_an_error_naming_the_variable():
    with pytest.raises(bc.BuildConfigError, match="TORCH_CUDA_ARCH_LIST"):
        bc.choose_arch_list(None, [], ["sm_50"], ["9.0"])


def test_visible_gpu_gets_its_own_arch_only():
    arch, why = bc.choose_arch_list(None, [(9, 0), (9, 0)], TORCH_ARCHS, NVCC_13_ARCHS)
    assert arch == "9.0"
    assert "visible GPU" in why
    arch, _ = bc.choose_arch_list(None, [(12, 0), (8, 6)], TORCH_ARCHS, NVCC_13_ARCHS)
    assert arch == "8.6;12.0"


def test_user_arch_list_wins():
    arch, why = bc.choose_arch_list(" 8.0 ", [(9, 0)], TORCH_ARCHS, NVCC_13_ARCHS)
    assert (arch, why) == ("8.0", "TORCH_CUDA_ARCH_LIST is set")


def test_torch_arch_entries_are_read_in_all_their_spellings():
    assert bc.torch_archs_as_versions(["sm_90a", "compute_90", "sm_100", "sm_75", "x"]) == [
        "7.5", "9.0", "10.0"]


def test_parse_nvcc_output():
    assert bc.parse_nvcc_version("Cuda compilation tools, release 13.0, V13.0.88") == (13, 0)
    assert bc.parse_nvcc_version("garbage") is None
    assert bc.parse_nvcc_archs("compute_75\ncompute_90\ncompute_100\n") == ["7.5", "9.0", "10.0"]
    assert bc.nvcc_home_from_dryrun(
        "#$ _NVVM_BRANCH_=nvvm\n#$ _HERE_=/usr/local/cuda-13.0/bin\n#$ TOP=x\n") == \
        "/usr/local/cuda-13.0"


def test_toolkit_from_variables_first_then_nvcc_then_default():
    never = lambda _: None   # noqa: E731
    assert bc.find_cuda_home({"CUDA_HOME": "/a", "CUDA_PATH": "/b"}, never)[0] == "/a"
    assert bc.find_cuda_home({"CUDA_PATH": "/b"}, never)[0] == "/b"
    # nvcc on PATH is a wrapper script: nvcc itself says where it lives.
    home, how = bc.find_cuda_home({}, which=lambda _: "/usr/local/bin/nvcc",
                                  ask_nvcc=lambda _: "/usr/local/cuda-13.0")
    assert home == "/usr/local/cuda-13.0" and "/usr/local/bin/nvcc" in how
    home, _ = bc.find_cuda_home({}, which=never, exists=lambda p: p == "/usr/local/cuda/bin/nvcc")
    assert home == "/usr/local/cuda"
    home, how = bc.find_cuda_home({}, which=never, exists=lambda _: False)
    assert home is None and "no nvcc" in how


def test_toolkit_from_a_symlinked_nvcc_when_nvcc_cannot_say(tmp_path):
    real = tmp_path / "cuda-13.0" / "bin"
    real.mkdir(parents=True)
    (real / "nvcc").write_text("")
    link = tmp_path / "bin"
    link.mkdir()
    (link / "nvcc").symlink_to(real / "nvcc")
    home, _ = bc.find_cuda_home({}, which=lambda _: str(link / "nvcc"), ask_nvcc=lambda _: None)
    assert home == str(tmp_path / "cuda-13.0")


def test_matching_toolkit_builds_cuda():
    assert bc.decide({}, "13.0", "/usr/local/cuda", "x", (13, 0))[0] is True


def test_mismatched_cuda_major_builds_cpu_only_with_the_reason_and_the_way_out():
    with_cuda, why = bc.decide({}, "12.8", "/usr/local/cuda", "x", (13, 0))
    assert with_cuda is False
    assert "CUDA 13.0" in why and "12.8" in why and "DECONVNET_EXT_CUDA=1" in why


@pytest.mark.parametrize("facts", [
    ("12.8", "/usr/local/cuda", (13, 0)),   # mismatched major
    (None, "/usr/local/cuda", (13, 0)),     # CPU torch
    ("13.0", None, None),                   # no toolkit
    ("13.0", "/opt/cuda", None),            # a toolkit without a working nvcc
])
def test_flag_1_turns_every_fallback_into_an_error(facts):
    torch_cuda, home, nvcc = facts
    assert bc.decide({}, torch_cuda, home, "x", nvcc)[0] is False
    with pytest.raises(bc.BuildConfigError, match="DECONVNET_EXT_CUDA=1"):
        bc.decide({"DECONVNET_EXT_CUDA": "1"}, torch_cuda, home, "x", nvcc)


def test_flag_0_skips_cuda_and_a_bad_flag_is_refused():
    assert bc.decide({"DECONVNET_EXT_CUDA": "0"}, "13.0", "/c", "x", (13, 0)) == (
        False, "DECONVNET_EXT_CUDA=0")
    with pytest.raises(bc.BuildConfigError, match="0 or 1"):
        bc.decide({"DECONVNET_EXT_CUDA": "yes"}, "13.0", "/c", "x", (13, 0))


def test_choose_on_a_gpu_less_machine_with_a_toolkit(monkeypatch):
    def fake_run(cmd):
        if "--version" in cmd:
            return "Cuda compilation tools, release 13.0, V13.0.88"
        if "--list-gpu-arch" in cmd:
            return "\n".join(f"compute_{a.replace('.', '')}" for a in NVCC_13_ARCHS)
        return None
    monkeypatch.setattr(bc, "_run", fake_run)
    choice = bc.choose({"CUDA_HOME": "/usr/local/cuda"}, fake_torch())
    assert choice.with_cuda and choice.arch_list == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert choice.warnings == []
    assert "CPU + CUDA" in choice.summary()

    choice = bc.choose({"CUDA_HOME": "/usr/local/cuda"}, fake_torch(capabilities=[(9, 0)]))
    assert choice.arch_list == "9.0"

    choice = bc.choose({"CUDA_HOME": "/usr/local/cuda"}, fake_torch(cuda="12.8"))
    assert not choice.with_cuda and len(choice.warnings) == 1
    assert "building without CUDA" in choice.warnings[0]

    # A CPU build of torch is a CPU-only build, and nothing to warn about.
    choice = bc.choose({"CUDA_HOME": "/usr/local/cuda"}, fake_torch(cuda=None))
    assert not choice.with_cuda and choice.warnings == []


def test_torch_arch_list_falls_back_to_build_flags_when_torch_answers_empty():
    torch = fake_torch(archs=[])
    torch._C._cuda_getArchFlags = lambda: "sm_80 sm_90"
    assert bc.torch_build_archs(torch) == ["sm_80", "sm_90"]


def test_arch_list_covers():
    built = "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert bc.arch_list_covers(built, (9, 0)) == (True, "sm_90 binary")
    assert bc.arch_list_covers(built, (8, 9))[0]           # sm_86 cubin runs on 8.9
    ok, how = bc.arch_list_covers(built, (12, 1))
    assert ok and "sm_120" in how
    ok, how = bc.arch_list_covers("9.0", (10, 0))           # no PTX: nothing for Blackwell
    assert not ok and "sm_100" in how
    assert bc.arch_list_covers("9.0+PTX", (10, 0)) == (
        True, "compute_90 PTX, JIT-compiled at first use")
    assert not bc.arch_list_covers("9.0", (8, 0))[0]
    assert not bc.arch_list_covers("9.0a", (9, 1))[0]
