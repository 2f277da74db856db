#!/usr/bin/env bash
# The REBAR paper's variance comparison on the 2-layer linear model: one trajectory (followed with
# simple_muprop, as the TF reference's SBNTrackGradVariances did) on which every estimator's log
# gradient variance is measured, each with its own control-variate state, from common noise.
#
# How long, on this project's 2-core machines (Intel Xeon, AVX-512, one core): every step computes
# all the listed estimators' gradients, about 40-60 ms, so 100,000 steps take about 1.2-1.7 hours.
# The JSON and the figure are rewritten after every epoch's row; `rebar-np variance` cannot resume,
# so a stopped comparison keeps its rows but starts over when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/variance
rebar-np variance --task sbn --n-layer 2 --follow simple_muprop \
    --estimators nvil,simple_muprop,muprop,concrete,rebar,dynamic_rebar,relax,arm,disarm \
    --steps 100000 --output results/variance/two_layer.json --plot results/variance/two_layer.png
