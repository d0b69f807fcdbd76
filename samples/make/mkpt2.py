"""samples/pt2/tiny.pt2: torch.export.save of a tiny module (float32 and
bfloat16 Linear layers, a buffer, a tensor constant)."""
import sys

import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)
        self.low = torch.nn.Linear(3, 2).to(torch.bfloat16)
        self.register_buffer("steps", torch.arange(6, dtype=torch.int64))
        self.scale = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x):
        y = self.lin(x) + self.scale + self.steps.sum()
        return self.low(y.bfloat16())


torch.export.save(torch.export.export(Tiny(), (torch.randn(2, 4),)), sys.argv[1])
print("ok")
