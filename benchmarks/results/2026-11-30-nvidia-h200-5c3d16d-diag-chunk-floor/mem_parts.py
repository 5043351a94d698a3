"""What HierTCN's constant ~12 MiB allocator peak (queue batch, 500 events) is: cuDNN on/off, and the same measure repeated."""
import sys
sys.path.insert(0, ".")
import torch
from hiertcn.bench import memory_vs_history
dev = torch.device("cuda")
for label, cudnn in (("warm-up", True), ("cudnn on", True), ("cudnn off", False), ("cudnn on again", True)):
    with torch.backends.cudnn.flags(enabled=cudnn):
        (row,) = memory_vs_history([500], device=dev)
    print(f"{label}: hiertcn {row['hiertcn_queue_bytes'] / 2**20:.2f} MiB, flat_tcn {row['flat_tcn_whole_bytes'] / 2**20:.2f} MiB, ratio {row['ratio']:.3f}", flush=True)
