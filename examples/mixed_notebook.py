# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Python and Julia in one notebook: registry, data, training, export
#
# - **Python** asks the registry which model to use,
# - **Julia** prepares the images (cells marked *Julia*; they run only where a
#   Julia installation is found, and the same preparation runs in numpy otherwise),
# - **Python** finetunes the model on the Julia arrays — they cross into torch
#   without a copy, a Julia `(W, H, C, N)` array being a torch `(N, C, H, W)` tensor —
#   and exports it to a verified ONNX file.
#
# This file is the jupytext twin of `mixed_notebook.ipynb`; `make notebook`
# keeps them in sync. Set `NOTEBOOK_QUICK=1` for a seconds-long run.

# %%
import os
import shutil
from pathlib import Path

# Julia is used only when it is installed: juliacall is never imported otherwise.
# Where it is, juliacall comes before torch: the other order can crash the
# process (juliacall warns about it), so it is imported here, first.
JULIA = os.environ.get("PYTHON_JULIAPKG_EXE") or shutil.which("julia")
if JULIA:
    from juliacall import Main as jl

import numpy as np  # noqa: E402 (after juliacall, on purpose)
import torch  # noqa: E402

import torchbridge  # noqa: E402
from torchbridge.train import fit  # noqa: E402

QUICK = os.environ.get("NOTEBOOK_QUICK") == "1"
OUT = Path(os.environ.get("NOTEBOOK_OUT", "notebook-output"))
print("Julia:", JULIA or "not found; the Julia cells fall back to numpy")

# %% [markdown]
# ## 1. Registry queries (Python)

# %%
for entry in torchbridge.search_models("small resnet", limit=5):
    print(f"{entry.id:40s} {entry.input_size} pretrained={entry.pretrained}")

# Offline without cached weights, a small timm model is trained from its random
# initialisation; with weights at hand, set MODEL to a pretrained id.
MODEL = os.environ.get("MODEL") or ("timm/test_resnet" if QUICK else "timm/resnet10t")
info = torchbridge.model_info(MODEL)
print(info.id, "-", info.description)
print("input size: torch", info.input_size, "/ Julia", info.julia_input_size)

# %% [markdown]
# ## 2. Data preparation (Julia)
#
# scikit-learn's 8×8 digits, upsampled `K` times (nearest neighbour), scaled to
# [-1, 1] and copied to three channels, as a Julia `Array{Float32,4}` of size
# `(W, H, 3, N)` — the layout Flux uses.

# %%
from sklearn.datasets import load_digits  # noqa: E402 (a notebook imports where it needs)

digits = load_digits()
K = 2 if QUICK else 4
LIMIT = 300 if QUICK else None
raw = digits.images[:LIMIT].astype(np.float32)  # (N, 8, 8), values 0..16
labels = digits.target[:LIMIT].astype(np.int64)

# %% tags=["julia"]
# Julia cell: runs only where Julia is installed
if JULIA:
    jl.seval(
        """
        function prepare(images::AbstractArray{<:Real,3}, k::Integer)
            n, h, w = size(images)  # the numpy (N, H, W) array, indexed as in Python
            out = Array{Float32,4}(undef, w * k, h * k, 3, n)
            for i in 1:n, y in 1:h*k, x in 1:w*k
                v = (Float32(images[i, cld(y, k), cld(x, k)]) / 16f0 - 0.5f0) / 0.5f0
                out[x, y, 1, i] = v
                out[x, y, 2, i] = v
                out[x, y, 3, i] = v
            end
            return out
        end
        """
    )
    whcn = jl.prepare(raw, K)  # a Julia array, shared with Python without a copy

# %% [markdown]
# Without Julia, the same preparation in numpy, producing the same column-major
# `(W, H, 3, N)` array.

# %%
if not JULIA:
    up = raw.repeat(K, axis=1).repeat(K, axis=2)  # (N, H, W)
    up = (up / 16.0 - 0.5) / 0.5
    whcn = np.array(np.repeat(up.transpose(2, 1, 0)[:, :, None, :], 3, axis=2), order="F")

# Julia order, declared: (W, H, 3, N) -> torch (N, 3, H, W), no copy
images = torchbridge.to_torch(whcn, layout="julia")
print("torch sees", tuple(images.shape), "over the same memory")

# %% [markdown]
# ## 3. Training (Python, on the Julia arrays)

# %%
torch.manual_seed(0)
model = torchbridge.load_model(MODEL, num_classes=10)
n = len(labels)
cut = (n * 4) // 5
batch = 32
# batches are slices of the shared tensor: still no copy of the Julia data
train = [
    (images[i : min(i + batch, cut)], labels[i : min(i + batch, cut)]) for i in range(0, cut, batch)
]
valid = [(images[cut:], labels[cut:])]
history = fit(
    model,
    train,
    valid,
    epochs=1 if QUICK else 4,
    optimizer={"rule": "Adam", "eta": 3e-3},
    loss="logitcrossentropy",
    metrics=["accuracy"],
    schedule={"schedule": "onecycle", "steps": (1 if QUICK else 4) * len(train)},
)
print(f"validation accuracy {history['valid_accuracy'][-1]:.1%}")

# %% [markdown]
# ## 4. Export (Python)

# %%
side = images.shape[-1]
report = torchbridge.export_onnx(model, OUT / "digits.onnx", input_size=(3, side, side))
print(
    f"{report.path}: {report.file_size / 1e6:.1f} MB, opset {report.opset}, "
    f"max |onnxruntime - torch| {report.max_abs_diff:.1e}"
)
