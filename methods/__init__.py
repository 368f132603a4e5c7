"""Learned-hyperparameter methods: they train on all N, need no validation split, and
choose among a small learning-rate sweep by their own objective."""

from methods._de_elbo import DEELBo, PlainELBo

__all__ = ["DEELBo", "PlainELBo"]
