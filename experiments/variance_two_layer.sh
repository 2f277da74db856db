#!/usr/bin/env bash
# The REBAR paper's variance comparison on the 2-layer linear model: one trajectory (followed with
# simple_muprop, as the TF reference's SBNTrackGradVariances did) on which every estimator's log
# gradient variance is measured, each with its own control-variate state, from common noise.
#
# How long, measured on this project's 2-core Intel Xeon (AVX-512) with a training run on the other core:
# every step computes all the listed estimators' gradients; 100,000 steps took about 1 hour (2026-12-03).
# The JSON and the figure are rewritten after every epoch's row; `rebar-np variance` cannot resume,
# so a stopped comparison keeps its rows but starts over when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/variance
rebar-np variance --task sbn --n-layer 2 --follow simple_muprop \
    --estimators nvil,simple_muprop,muprop,concrete,rebar,dynamic_rebar,relax,arm,disarm \
    --steps 100000 --output results/variance/two_layer.json --plot results/variance/two_layer.png
