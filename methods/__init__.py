"""Learned-hyperparameter methods: they train on all N, need no validation split, and
choose among a small learning-rate sweep by their own objective."""

from methods._de_elbo import DEELBo, PlainELBo
from methods._laplace import LaplaceMarglik
from methods._ntk import NTKMarglik

__all__ = ["DEELBo", "LaplaceMarglik", "NTKMarglik", "PlainELBo"]
