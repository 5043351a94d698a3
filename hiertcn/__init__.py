"""hiertcn: HierTCN (You et al., WWW 2019) for dynamic next-item recommendation."""

__version__ = "0.1.0"
