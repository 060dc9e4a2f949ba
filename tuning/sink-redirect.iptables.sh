#!/bin/sh
# The iptables equivalent of tuning/sink-redirect.nft: every TCP and UDP port of SINK_ADDR to
# `swarmscan sink` on SINK_ADDR:SINK_PORT (see that file for why TCP is DNATed and UDP is
# TPROXYed, and what the sink recovers from each).
#
#   SINK_ADDR=192.0.2.1 SINK_PORT=6881 sh tuning/sink-redirect.iptables.sh        # add
#   SINK_ADDR=192.0.2.1 SINK_PORT=6881 sh tuning/sink-redirect.iptables.sh -D     # remove
set -eu
: "${SINK_ADDR:?set SINK_ADDR to the address taken over}"
: "${SINK_PORT:?set SINK_PORT to the sink's port}"
op=${1:--A}
iptables -w -t nat "$op" PREROUTING -d "$SINK_ADDR" -p tcp \
	-j DNAT --to-destination "$SINK_ADDR:$SINK_PORT"
iptables -w -t mangle "$op" PREROUTING -d "$SINK_ADDR" -p udp \
	-j TPROXY --on-ip "$SINK_ADDR" --on-port "$SINK_PORT" --tproxy-mark 0x5151/0xffffffff
