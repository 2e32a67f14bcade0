"""A from-scratch re-implementation of the seed notebook's method, as a baseline.

All 37 ``features`` modules of torchvision's VGG19 are hooked and the whole network, classifier
included, runs every step; torchvision's in-place ReLUs are kept (so the hooked conv5_1 output is
really relu5_1, as in the notebook); style is the per-channel-normalised Gram on relu1_1…relu5_1;
L-BFGS runs 10 outer steps of 20 iterations with a clip to [0,1] after each; init is the content.

Deviations, so it can run offline with the same weights as everything else: the bundled original
VGG19 conv weights with their own (Caffe) preprocessing; a randomly initialised classifier (it only
adds cost); losses divided by their target's magnitude like nst_core's, so the weights compare.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torchvision

from nst_core.weights import CAFFE_MEAN_BGR, load_original_vgg19

STYLE_MODULES = (1, 6, 11, 20, 29)  # relu1_1 … relu5_1
CONTENT_MODULE = 28  # conv5_1 (clobbered by the in-place ReLU that follows)


class SeedBaseline:
    """The seed's hooked whole-network VGG19 with an L-BFGS loop."""

    def __init__(self, device: "str | torch.device" = "cpu") -> None:
        with torch.inference_mode(False):
            torch.manual_seed(0)
            net = torchvision.models.vgg19(weights=None)
            net.features.load_state_dict(load_original_vgg19().state_dict)
            self.net = net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.mean = torch.tensor(CAFFE_MEAN_BGR, device=device).view(1, 3, 1, 1)
        self.store: Dict[int, torch.Tensor] = {}
        for i, m in enumerate(self.net.features):
            m.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def hook(module, inputs, output):
            self.store[i] = output
        return hook

    def features(self, image: torch.Tensor) -> Dict[int, torch.Tensor]:
        """Run the whole network; return every hooked output."""
        self.store = {}
        self.net((image.flip(1) * 255 - self.mean))
        return self.store

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        """Per-channel L2-normalised Gram (channel cosine similarities)."""
        f = f.flatten(2)
        f = f / f.norm(dim=2, keepdim=True).clamp_min(1e-8)
        return f @ f.transpose(1, 2)

    def run(self, content: torch.Tensor, style: torch.Tensor, outer: int = 10, inner: int = 20,
            content_weight: float = 1.0, style_weight: float = 1e3,
            step_done: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
        """Stylise ``content`` with ``style``; returns the clipped image."""
        with torch.inference_mode(False), torch.enable_grad():
            content, style = content.to(self.device), style.to(self.device)
            with torch.no_grad():
                fc = self.features(content)[CONTENT_MODULE].clone()
                fs = self.features(style)
                gs = {i: self.gram(fs[i]) for i in STYLE_MODULES}
            x = content.clone().requires_grad_(True)
            opt = torch.optim.LBFGS([x], max_iter=inner, history_size=100)

            def closure():
                opt.zero_grad()
                f = self.features(x)
                c = (f[CONTENT_MODULE] - fc).pow(2).mean() / fc.pow(2).mean()
                s = sum((self.gram(f[i]) - gs[i]).pow(2).mean() / gs[i].pow(2).mean() for i in STYLE_MODULES)
                loss = content_weight * c + style_weight * s / len(STYLE_MODULES)
                loss.backward()
                return loss

            for _ in range(outer):
                opt.step(closure)
                with torch.no_grad():
                    x.clamp_(0, 1)
                if step_done is not None:
                    step_done(x.detach())
            return x.detach().cpu()
