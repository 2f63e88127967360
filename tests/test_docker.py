"""The Docker files, checked by reading them (no Docker engine needed).

Dockerfile (CPU, also the hosted demo), docker/Dockerfile.gpu + docker-compose.gpu.yml (CUDA
torch + RAPIDS cuML), docker/entrypoint.sh and .dockerignore: every file they copy exists and is
not ignored, torch's pins are read from requirements.txt rather than repeated, every gapscope
command and option they use exists, the ports agree with the demo's default, the compose file
has its services, profile, GPU reservation and volumes, and every `make` target they name
exists. The entrypoint's logic runs against a stand-in `python` that only records its calls.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCKERFILES = [ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
COMPOSE = ROOT / "docker-compose.gpu.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERIGNORE = ROOT / ".dockerignore"
FILES = [*DOCKERFILES, COMPOSE, ENTRYPOINT, DOCKERIGNORE]
APP = "/app"  # WORKDIR of both images
PARSE_ARGS = argparse.ArgumentParser.parse_args


class Parsed(Exception):
    """Raised once the demo's arguments are parsed, before the demo is built and served."""


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: a continued line never ends"
    return out


def args_of(rest: str) -> list[str]:
    """Arguments of an instruction: JSON form or shell words."""
    if rest.startswith("["):
        return json.loads(rest)
    return shlex.split(rest)


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    out = []
    for word, rest in instructions(dockerfile):
        if word in ("COPY", "ADD"):
            parts = args_of(rest)
            flags = [p for p in parts if p.startswith("--")]
            assert not any(f.startswith("--from") for f in flags), "no multi-stage copies expected"
            paths = [p for p in parts if not p.startswith("--")]
            out.append((paths[:-1], paths[-1]))
    return out


def env_of(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions(dockerfile):
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"{dockerfile}: use ENV KEY=value, not {item!r}"
                env[key] = value
    return env


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def demo_args(monkeypatch, *argv: str) -> argparse.Namespace:
    """What `python -m demo ARGV` parses, with no GRADIO_* / GAPSCOPE_* variable set."""
    from demo.__main__ import main

    for key in ("GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME", "GAPSCOPE_RESULTS"):
        monkeypatch.delenv(key, raising=False)
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["args"] = PARSE_ARGS(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        main(list(argv))
    return seen["args"]


def volume_parts(volume: str) -> tuple[str, str]:
    """(source, target) of a compose short-syntax volume, `${VAR:-default}` sources included."""
    volume = re.sub(r":(ro|rw)$", "", str(volume))
    source, target = volume.rsplit(":", 1)
    return source, target


def help_text(*module_and_cmd: str) -> str:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", *module_and_cmd, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, f"{module_and_cmd} --help failed: {out.stderr}"
    return out.stdout


def gapscope_commands() -> list[tuple[str, str | None, list[str], str]]:
    """(module, batch command or None, --options, where) for every `python -m batch|demo` use."""
    texts = [(p.name, p.read_text()) for p in FILES if p != DOCKERIGNORE]
    command = compose()["services"]["batch"]["command"]
    texts.append(("compose batch command", " ".join(command)))
    found = []
    for where, text in texts:
        text = re.sub(r"\\\n", " ", text)  # shell continuation lines
        for m in re.finditer(r"python -m (batch|demo)\b([^\n;|&`)]*)", text):
            words = m.group(2).split()
            cmd = None
            if m.group(1) == "batch":
                if not words or words[0].startswith("-"):
                    continue  # `python -m batch` named in prose
                cmd = words[0]
            options = [w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)]
            found.append((m.group(1), cmd, options, where))
    return found


def test_copied_paths_exist_and_are_not_ignored():
    ignore = [
        line.strip().lstrip("/").rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in ignore if p.startswith("!")], "keep .dockerignore free of exceptions"

    def ignored(path: str) -> str | None:
        parts = Path(path).parts
        for pattern in ignore:
            for i in range(1, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if fnmatch.fnmatchcase(prefix, pattern):
                    return pattern
                if pattern.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pattern[3:]):
                    return pattern
        return None

    for dockerfile in DOCKERFILES:
        sources = [s for srcs, _ in copies(dockerfile) for s in srcs]
        assert sources, f"{dockerfile} copies nothing"
        for src in sources:
            assert "*" not in src, f"{dockerfile}: name files explicitly, not {src}"
            assert (ROOT / src).exists(), f"{dockerfile} copies {src}, which does not exist"
            assert ignored(src) is None, f"{dockerfile} copies {src}, ignored by {ignored(src)}"
        for needed in (
            "lib/",
            "batch/",
            "demo/",
            "Makefile",
            "requirements.txt",
            "requirements-dev.txt",
            "docker/entrypoint.sh",
        ):
            assert needed in sources, f"{dockerfile} does not copy {needed}"
    for expected in (".venv", ".cache", "results", "data", ".git", "tests", ".rapids"):
        assert expected in ignore, f".dockerignore should exclude {expected}"
    assert "**/__pycache__" in ignore


def test_requirements_installed_exist_and_torch_pins_come_from_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    pins = dict(re.findall(r"(?m)^(torch|torchvision)==(\S+)$", requirements))
    assert set(pins) == {"torch", "torchvision"}, "requirements.txt should pin both"
    for dockerfile in DOCKERFILES:
        runs = " ".join(rest for word, rest in instructions(dockerfile) if word == "RUN")
        derived = re.search(r"(grep -v .*?requirements\.txt) > (\S+)", runs)
        for req in re.findall(r"-r\s+(\S+)", runs):
            if derived and req == derived.group(2):
                continue  # made from requirements.txt in the image: checked below
            assert (ROOT / req).is_file(), f"{dockerfile} installs {req}, which does not exist"
            assert any(req in srcs for srcs, _ in copies(dockerfile)), f"{req} is not copied"
        if derived:  # the GPU image keeps RAPIDS' own dask: all of requirements.txt but it
            assert f"-r {derived.group(2)}" in runs
            out = subprocess.run(
                ["sh", "-c", derived.group(1)], cwd=ROOT, capture_output=True, text=True
            )
            dropped = set(requirements.splitlines()) - set(out.stdout.splitlines())
            assert {d.split("==")[0] for d in dropped} == {"dask", "distributed"}, dropped
        else:
            assert "-r requirements.txt" in runs
        text = dockerfile.read_text()
        for version in pins.values():
            assert version not in text, f"{dockerfile} repeats the pin {version}"
        assert not re.search(r"torch(vision)?\s*==\s*\d", text), f"{dockerfile} repeats a pin"
        # The grep that reads the pins, run as the image runs it, finds exactly both.
        grep = re.search(r"\$\((grep .*?requirements\.txt)\)", runs)
        assert grep, f"{dockerfile} should read torch's pins from requirements.txt with grep"
        out = subprocess.run(["sh", "-c", grep.group(1)], cwd=ROOT, capture_output=True, text=True)
        assert out.stdout.split() == [f"{k}=={v}" for k, v in pins.items()]
        assert "--index-url" in runs.split("$(grep")[0], "torch should come from its wheel index"
    cpu = " ".join(rest for word, rest in instructions(DOCKERFILES[0]) if word == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu


def test_entrypoint_is_an_executable_sh_script_used_by_both_images():
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh should be executable"
    lines = ENTRYPOINT.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    for dockerfile in DOCKERFILES:
        entry = [args_of(rest) for word, rest in instructions(dockerfile) if word == "ENTRYPOINT"]
        assert entry == [[f"{APP}/docker/entrypoint.sh"]], dockerfile
        assert any(dst == "docker/entrypoint.sh" for _, dst in copies(dockerfile))
        words = instructions(dockerfile)
        assert ("WORKDIR", APP) in words, f"{dockerfile}: WORKDIR {APP}"
        assert any(w == "RUN" and "chmod 755 docker/entrypoint.sh" in r for w, r in words)


def test_every_gapscope_command_and_option_used_exists():
    used = gapscope_commands()
    batch_cmds = {cmd for module, cmd, _, _ in used if module == "batch"}
    assert {"runs", "example", "run"} <= batch_cmds, batch_cmds
    assert any(module == "demo" for module, *_ in used)
    options_used = {o for *_, options, _ in used for o in options}
    assert {"--results", "--out", "--real", "--synthetic", "--backend"} <= options_used

    helps: dict[tuple[str, str | None], str] = {}
    for module, cmd, options, where in used:
        key = (module, cmd)
        if key not in helps:
            helps[key] = help_text(module, *([cmd] if cmd else []))
        for option in options:
            pattern = rf"(?<![\w-]){re.escape(option)}(?![\w-])"
            assert re.search(pattern, helps[key]), (
                f"{where}: `python -m {module} {cmd or ''}` has no option {option}"
            )


def test_ports_agree_with_the_demo_default(monkeypatch):
    port = str(demo_args(monkeypatch).port)
    assert port == "7860"
    for dockerfile in DOCKERFILES:
        words = instructions(dockerfile)
        exposed = [rest for word, rest in words if word == "EXPOSE"]
        assert exposed == [port], f"{dockerfile}: EXPOSE {exposed}"
        env = env_of(dockerfile)
        assert env["GRADIO_SERVER_PORT"] == port
        assert env["GRADIO_SERVER_NAME"] == "0.0.0.0"
        assert env["NUMBA_CACHE_DIR"].startswith(f"{APP}/")
        health = [rest for word, rest in words if word == "HEALTHCHECK"]
        assert len(health) == 1 and "GRADIO_SERVER_PORT" in health[0] and port in health[0]
    # the README's front matter makes the repository a Hugging Face Docker Space
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    space = yaml.safe_load(front)
    assert space["sdk"] == "docker" and str(space["app_port"]) == port
    for name, service in compose()["services"].items():
        container_ports = [
            str(p).rsplit(":", 1)[-1].split("/")[0] for p in service.get("ports", [])
        ]
        if name == "demo":
            assert container_ports == [port]
        elif name == "scheduler":  # Dask's port and its dashboard, as its command sets them
            assert container_ports == ["8786", "8787"]
            assert service["command"][2:6] == ["--port", "8786", "--dashboard-address", ":8787"]
        else:
            assert not container_ports, name


def healthcheck_command(dockerfile: Path) -> list[str]:
    [rest] = [rest for word, rest in instructions(dockerfile) if word == "HEALTHCHECK"]
    assert "--start-period=" in rest, "the first start builds the example run: allow for it"
    _, _, command = rest.partition(" CMD ")
    return json.loads(command)  # exec form: no shell needed in the image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_answers_healthy_only_while_the_port_serves(dockerfile):
    import http.server
    import threading

    command = healthcheck_command(dockerfile)
    assert command[0] == "python"
    command = [sys.executable, *command[1:]]

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the demo's /healthz; any other path is not health
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    port = str(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "GRADIO_SERVER_PORT": port}
        assert subprocess.run(command, env=env, cwd=ROOT, timeout=30).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=30)
    assert down.returncode == 1, "docker reads exit 1 as unhealthy"


def test_images_run_as_a_non_root_user_with_volumes_for_results_and_data():
    expected_user = {"Dockerfile": "1000:1000", "Dockerfile.gpu": "rapids"}
    for dockerfile in DOCKERFILES:
        words = instructions(dockerfile)
        users = [rest for word, rest in words if word == "USER"]
        assert users and users[-1] == expected_user[dockerfile.name], dockerfile
        volumes = [args_of(rest) for word, rest in words if word == "VOLUME"]
        assert volumes == [[f"{APP}/results", f"{APP}/data"]], dockerfile
        # the volume folders exist and are chowned before VOLUME (later changes are lost)
        names = [word for word, _ in words]
        prep = [
            i
            for i, (word, rest) in enumerate(words)
            if word == "RUN" and "mkdir -p" in rest and "chown" in rest
        ]
        assert prep and prep[0] < names.index("VOLUME"), dockerfile
    cpu = instructions(DOCKERFILES[0])
    assert cpu[0] == ("FROM", "python:3.11-slim")
    assert any(w == "RUN" and "--uid 1000" in r for w, r in cpu)
    gpu = instructions(DOCKERFILES[1])
    assert gpu[0] == ("FROM", "rapidsai/base:26.10-cuda13-py3.12")


def test_compose_services_profile_gpu_and_volumes():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"demo", "batch", "scheduler", "worker", "batch-dask"}
    assert "profiles" not in services["demo"], "the demo starts with a plain `up`"
    assert services["batch"]["profiles"] == ["batch"]
    assert "command" not in services["demo"], "the demo runs the image's entrypoint"
    batch_options = {
        "--real": "${REAL:-/data/real}",
        "--synthetic": "${SYNTHETIC:-/data/synthetic}",
        "--results": f"{APP}/results",
        "--backend": "auto",
    }
    for name, extra in (("batch", {}), ("batch-dask", {"--dask": "tcp://scheduler:8786"})):
        command = services[name]["command"]
        assert command[:4] == ["python", "-m", "batch", "run"]
        assert dict(zip(command[4::2], command[5::2], strict=True)) == batch_options | extra
    # the cluster: its own profile; workers on the GPUs, one per GPU (dask-cuda), pointed
    # at the scheduler the batch job names; the scheduler needs no GPU
    for name in ("scheduler", "worker", "batch-dask"):
        assert services[name]["profiles"] == ["dask"], name
    assert services["worker"]["command"] == ["dask", "cuda", "worker", "tcp://scheduler:8786"]
    assert services["scheduler"]["command"][:4] == ["dask", "scheduler", "--port", "8786"]
    assert services["scheduler"]["deploy"] == {}
    for name, service in services.items():
        if name == "scheduler":
            continue
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices, name
        targets = [volume_parts(v)[1] for v in service["volumes"]]
        assert f"{APP}/results" in targets and f"{APP}/data" in targets, name
        assert "/data" in targets, f"{name}: the batch inputs are under /data"
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context.is_dir(), build
        assert (context / build["dockerfile"]).is_file(), build
        assert (context / build["dockerfile"]).resolve() == DOCKERFILES[1]
    named = {volume_parts(v)[0] for s in services.values() for v in s["volumes"]}
    named = {v for v in named if not v.startswith(("$", ".", "/"))}
    assert named <= set(spec.get("volumes") or {}), named


def test_make_targets_named_in_the_docker_files_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set()
    for m in re.finditer(r"(?m)^([A-Za-z0-9_.$()/ -]+?)\s*::?(?!=)", makefile):
        targets.update(m.group(1).split())
    assert {"demo", "batch", "test"} <= targets
    named = []
    for path in FILES:
        for line in path.read_text().splitlines():
            # `make X` where a command starts: line start, comment, backtick, ;, &&, ||, (
            for m in re.finditer(r"(?:^|[#`;&|(])\s*make\s+([^`;&|)#\n]*)", line):
                words = [w for w in m.group(1).split() if not w.startswith("-") and "=" not in w]
                if words:
                    named.append((path.name, words[0]))
    assert ("docker-compose.gpu.yml", "demo") in named
    for where, target in named:
        assert target in targets, f"{where} names `make {target}`, which the Makefile lacks"


@pytest.fixture
def fake_python(tmp_path):
    """A `python` on PATH that logs its arguments; `batch runs` prints $FAKE_RUNS and
    `batch run` exits with $FAKE_RUN_STATUS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    script = bin_dir / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1 $2 $3" = "-m batch runs" ]; then printf "%s" "${FAKE_RUNS:-}"; fi\n'
        'if [ "$1 $2 $3" = "-m batch run" ]; then exit "${FAKE_RUN_STATUS:-0}"; fi\n'
    )
    script.chmod(0o755)

    def run(*args: str, runs: str = "", example_built: bool = False, status: int = 0) -> list[str]:
        log.write_text("")
        example = tmp_path / "example"
        if example_built:
            example.mkdir(exist_ok=True)
            (example / "metadata.csv").write_text("filename,domain,category\n")
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_RUNS": runs,
            "FAKE_RUN_STATUS": str(status),
            "GAPSCOPE_RESULTS": str(tmp_path / "results"),
            "GAPSCOPE_EXAMPLE": str(example),
        }
        done = subprocess.run([str(ENTRYPOINT), *args], env=env, timeout=30)
        assert (done.returncode != 0) == (status != 0)
        return log.read_text().splitlines()

    return run, tmp_path


def test_entrypoint_builds_the_example_run_once_then_serves(fake_python):
    run, tmp = fake_python
    results, example = tmp / "results", tmp / "example"
    runs = f"-m batch runs --results {results}"
    building = f"-m demo --results {results} --building"
    build = f"-m batch example --out {example}"
    batch = (
        f"-m batch run --real {example}/real --synthetic {example}/synthetic --results {results}"
    )
    serve = f"-m demo --results {results}"

    def first_start(calls: list[str], *foreground: str) -> None:
        """runs, then the building page (in the background, so in any order) beside the
        foreground steps in their order, then the demo."""
        assert calls[0] == runs and calls[-1] == serve
        assert sorted(calls[1:-1]) == sorted([building, *foreground])
        assert [c for c in calls[1:-1] if c != building] == list(foreground)

    first_start(run(runs="no published runs in results\n"), build, batch)
    first_start(run(runs="", example_built=True), batch)
    assert (results / "building.log").is_file()  # what the building page shows
    published = "* 20260101-000000  efficientnet-lite0  1797+1000 images  2026-01-01\n"
    assert run("--port", "8080", runs=published) == [runs, f"{serve} --port 8080"]
    assert run("python", "-m", "batch", "runs") == ["-m batch runs"]
    # a failed batch run stops the container rather than serving nothing
    failed = run(runs="", example_built=True, status=1)
    assert failed[0] == runs and serve not in failed and batch in failed


def test_demo_parses_what_the_entrypoint_passes(monkeypatch):
    """argparse itself, not only the --help text: `--results DIR` plus options passed on."""
    args = demo_args(monkeypatch, "--results", "results", "--port", "8080")
    assert str(args.results) == "results" and args.port == 8080
    assert demo_args(monkeypatch).host == "127.0.0.1"  # the images set GRADIO_SERVER_NAME
