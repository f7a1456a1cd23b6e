"""What a device needs: `deploy` runs without Lightning and wandb; `supernet` stays pure."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Block the training stack outright, then load, lower and run a member: if anything in deploy
# (or what it imports) needed them, this fails.
SCRIPT = """
import sys
from importlib.abc import MetaPathFinder

BANNED = ("pytorch_lightning", "lightning", "lightning_fabric", "wandb")

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
import onnxruntime as ort
import torch
import deploy
import deploy.adapt
from supernet import SearchSpace, SuperNet, extract
space = SearchSpace.from_yaml(sys.argv[1])
net = SuperNet(space).eval()
config = space.largest()
static = extract(net, config).eval()
model = deploy.lower_member(static, deploy.trained_weight_quant(net, static, config), (1, 16, 16))
s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
s.run(None, {"input": torch.randn(2, 1, 16, 16).numpy()})
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in BANNED))
"""


def test_deploy_runs_without_lightning_or_wandb():
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "configs/spaces/tiny.yaml")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("loaded: []")


def test_importing_deploy_loads_no_lightning_and_no_more_wandb_than_timm():
    """timm (which `supernet` builds on) imports wandb by itself when it is installed; deploy
    must add nothing of the training stack on top."""
    code = ("import sys\n"
            "stack = lambda: {m for m in sys.modules if m.split('.')[0] in "
            "('pytorch_lightning', 'lightning', 'lightning_fabric', 'wandb')}\n"
            "import timm\n"
            "before = stack()\n"
            "import deploy\n"
            "print(sorted(stack() - before), any('lightning' in m for m in stack()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] False"


def imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in sorted((REPO / package).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add((node.module or "").split(".")[0])
        found[path.name] = names
    return found


def test_dependencies_point_one_way():
    training = {"pytorch_lightning", "lightning", "wandb", "nas", "costmodels"}
    for name, names in imports("deploy").items():
        assert not names & training, (name, names & training)
    for name, names in imports("supernet").items():
        assert not names & (training | {"deploy"}), (name, names)
