"""The sockperf and iperf3 output parsers, on outputs captured from real runs in a bench
lab (sockperf 3.7, iperf3 3.12, on this project's VM) and from failed runs."""

from __future__ import annotations

import pytest

from sluice.bench import iperf, sockperf

# sockperf ping-pong --tcp --mps max -m 64 --full-rtt -t 1, bench/client -> bench/remote
# (bpf lab, both ends on one core at SCHED_FIFO)
PING_PONG_RTT = (
    'sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n'
    'sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)\n'
    '\n'
    '[ 0] IP = 198.18.18.2     PORT = 11111 # TCP\n'
    'sockperf: Warmup stage (sending a few dummy messages)...\n'
    'sockperf: Starting test...\n'
    'sockperf: Test end (interrupted by timer)\n'
    'sockperf: Test ended\n'
    'sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMe'
    'ssages=33348; ReceivedMessages=33347\n'
    'sockperf: ========= Printing statistics for Server No: 0\n'
    'sockperf: [Valid Duration] RunTime=0.600 sec; SentMessages=19287; ReceivedMessages=19287\n'
    'sockperf: \x1b[2;35m====> avg-rtt=31.090 (std-dev=361.375)\x1b[0m\n'
    'sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0\n'
    'sockperf: Summary: Round trip is 31.090 usec\n'
    'sockperf: \x1b[2;35mTotal 19287 observations\x1b[0m; each percentile contain'
    's 192.87 observations\n'
    'sockperf: ---> <MAX> observation = 50204.227\n'
    'sockperf: ---> percentile 99.999 = 50204.227\n'
    'sockperf: ---> percentile 99.990 =  282.390\n'
    'sockperf: ---> percentile 99.900 =  156.803\n'
    'sockperf: ---> percentile 99.000 =   47.540\n'
    'sockperf: ---> percentile 90.000 =   28.342\n'
    'sockperf: ---> percentile 75.000 =   28.031\n'
    'sockperf: ---> percentile 50.000 =   27.801\n'
    'sockperf: ---> percentile 25.000 =   27.621\n'
    'sockperf: ---> <MIN> observation =   27.060\n'
)

# the same without --full-rtt (loopback): sockperf prints half round trips
PING_PONG_HALF = (
    'sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n'
    'sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)\n'
    '\n'
    '[ 0] IP = 127.0.0.1       PORT = 11111 # TCP\n'
    'sockperf: Warmup stage (sending a few dummy messages)...\n'
    'sockperf: Starting test...\n'
    'sockperf: Test end (interrupted by timer)\n'
    'sockperf: Test ended\n'
    'sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMe'
    'ssages=39605; ReceivedMessages=39604\n'
    'sockperf: ========= Printing statistics for Server No: 0\n'
    'sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=28374; ReceivedMessages=28374\n'
    'sockperf: \x1b[2;35m====> avg-latency=27.310 (std-dev=10.876)\x1b[0m\n'
    'sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0\n'
    'sockperf: Summary: Latency is 27.310 usec\n'
    'sockperf: \x1b[2;35mTotal 28374 observations\x1b[0m; each percentile contain'
    's 283.74 observations\n'
    'sockperf: ---> <MAX> observation =  823.706\n'
    'sockperf: ---> percentile 99.999 =  823.706\n'
    'sockperf: ---> percentile 99.990 =  496.003\n'
    'sockperf: ---> percentile 99.900 =   71.125\n'
    'sockperf: ---> percentile 99.000 =   42.092\n'
    'sockperf: ---> percentile 90.000 =   31.947\n'
    'sockperf: ---> percentile 75.000 =   29.744\n'
    'sockperf: ---> percentile 50.000 =   28.196\n'
    'sockperf: ---> percentile 25.000 =   26.824\n'
    'sockperf: ---> <MIN> observation =    5.743\n'
)

# nothing listening on the port
PING_PONG_REFUSED = (
    'sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n'
    'sockperf: ERROR: Can`t connect socket (errno=111 Connection refused)\n'
)

# iperf3 --client 198.18.18.2 --port 5201 --time 1 --json --bitrate 1G, same lab
STREAM = (
    '{\n'
    '\t"start":\t{\n'
    '\t\t"connected":\t[{\n'
    '\t\t\t\t"socket":\t5,\n'
    '\t\t\t\t"local_host":\t"198.18.17.2",\n'
    '\t\t\t\t"local_port":\t60824,\n'
    '\t\t\t\t"remote_host":\t"198.18.18.2",\n'
    '\t\t\t\t"remote_port":\t5201\n'
    '\t\t\t}],\n'
    '\t\t"version":\t"iperf 3.12",\n'
    '\t\t"system_info":\t"Linux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64",\n'
    '\t\t"timestamp":\t{\n'
    '\t\t\t"time":\t"Sat, 21 Nov 2026 15:55:59 GMT",\n'
    '\t\t\t"timesecs":\t1795276559\n'
    '\t\t},\n'
    '\t\t"connecting_to":\t{\n'
    '\t\t\t"host":\t"198.18.18.2",\n'
    '\t\t\t"port":\t5201\n'
    '\t\t},\n'
    '\t\t"cookie":\t"37j4pvcj6x63wduow6tjtdsxz2ieyaqhst3y",\n'
    '\t\t"tcp_mss_default":\t1398,\n'
    '\t\t"target_bitrate":\t1000000000,\n'
    '\t\t"sock_bufsize":\t0,\n'
    '\t\t"sndbuf_actual":\t16384,\n'
    '\t\t"rcvbuf_actual":\t131072,\n'
    '\t\t"test_start":\t{\n'
    '\t\t\t"protocol":\t"TCP",\n'
    '\t\t\t"num_streams":\t1,\n'
    '\t\t\t"blksize":\t131072,\n'
    '\t\t\t"omit":\t0,\n'
    '\t\t\t"duration":\t1,\n'
    '\t\t\t"bytes":\t0,\n'
    '\t\t\t"blocks":\t0,\n'
    '\t\t\t"reverse":\t0,\n'
    '\t\t\t"tos":\t0,\n'
    '\t\t\t"target_bitrate":\t1000000000\n'
    '\t\t}\n'
    '\t},\n'
    '\t"intervals":\t[{\n'
    '\t\t\t"streams":\t[{\n'
    '\t\t\t\t\t"socket":\t5,\n'
    '\t\t\t\t\t"start":\t0,\n'
    '\t\t\t\t\t"end":\t1.000019,\n'
    '\t\t\t\t\t"seconds":\t1.0000189542770386,\n'
    '\t\t\t\t\t"bytes":\t115081216,\n'
    '\t\t\t\t\t"bits_per_second":\t920632278.08075058,\n'
    '\t\t\t\t\t"retransmits":\t1,\n'
    '\t\t\t\t\t"snd_cwnd":\t1839768,\n'
    '\t\t\t\t\t"snd_wnd":\t11266048,\n'
    '\t\t\t\t\t"rtt":\t662,\n'
    '\t\t\t\t\t"rttvar":\t837,\n'
    '\t\t\t\t\t"pmtu":\t1450,\n'
    '\t\t\t\t\t"omitted":\tfalse,\n'
    '\t\t\t\t\t"sender":\ttrue\n'
    '\t\t\t\t}],\n'
    '\t\t\t"sum":\t{\n'
    '\t\t\t\t"start":\t0,\n'
    '\t\t\t\t"end":\t1.000019,\n'
    '\t\t\t\t"seconds":\t1.0000189542770386,\n'
    '\t\t\t\t"bytes":\t115081216,\n'
    '\t\t\t\t"bits_per_second":\t920632278.08075058,\n'
    '\t\t\t\t"retransmits":\t1,\n'
    '\t\t\t\t"omitted":\tfalse,\n'
    '\t\t\t\t"sender":\ttrue\n'
    '\t\t\t}\n'
    '\t\t}],\n'
    '\t"end":\t{\n'
    '\t\t"streams":\t[{\n'
    '\t\t\t\t"sender":\t{\n'
    '\t\t\t\t\t"socket":\t5,\n'
    '\t\t\t\t\t"start":\t0,\n'
    '\t\t\t\t\t"end":\t1.000019,\n'
    '\t\t\t\t\t"seconds":\t1.000019,\n'
    '\t\t\t\t\t"bytes":\t115081216,\n'
    '\t\t\t\t\t"bits_per_second":\t920632235.98751628,\n'
    '\t\t\t\t\t"retransmits":\t1,\n'
    '\t\t\t\t\t"max_snd_cwnd":\t1839768,\n'
    '\t\t\t\t\t"max_snd_wnd":\t11266048,\n'
    '\t\t\t\t\t"max_rtt":\t662,\n'
    '\t\t\t\t\t"min_rtt":\t662,\n'
    '\t\t\t\t\t"mean_rtt":\t662,\n'
    '\t\t\t\t\t"sender":\ttrue\n'
    '\t\t\t\t},\n'
    '\t\t\t\t"receiver":\t{\n'
    '\t\t\t\t\t"socket":\t5,\n'
    '\t\t\t\t\t"start":\t0,\n'
    '\t\t\t\t\t"end":\t1.000424,\n'
    '\t\t\t\t\t"seconds":\t1.000019,\n'
    '\t\t\t\t\t"bytes":\t114883380,\n'
    '\t\t\t\t\t"bits_per_second":\t918677520.73121,\n'
    '\t\t\t\t\t"sender":\ttrue\n'
    '\t\t\t\t}\n'
    '\t\t\t}],\n'
    '\t\t"sum_sent":\t{\n'
    '\t\t\t"start":\t0,\n'
    '\t\t\t"end":\t1.000019,\n'
    '\t\t\t"seconds":\t1.000019,\n'
    '\t\t\t"bytes":\t115081216,\n'
    '\t\t\t"bits_per_second":\t920632235.98751628,\n'
    '\t\t\t"retransmits":\t1,\n'
    '\t\t\t"sender":\ttrue\n'
    '\t\t},\n'
    '\t\t"sum_received":\t{\n'
    '\t\t\t"start":\t0,\n'
    '\t\t\t"end":\t1.000424,\n'
    '\t\t\t"seconds":\t1.000424,\n'
    '\t\t\t"bytes":\t114883380,\n'
    '\t\t\t"bits_per_second":\t918677520.73121,\n'
    '\t\t\t"sender":\ttrue\n'
    '\t\t},\n'
    '\t\t"cpu_utilization_percent":\t{\n'
    '\t\t\t"host_total":\t14.145507352686074,\n'
    '\t\t\t"host_user":\t0,\n'
    '\t\t\t"host_system":\t14.145507352686074,\n'
    '\t\t\t"remote_total":\t9.6131221606385147,\n'
    '\t\t\t"remote_user":\t0,\n'
    '\t\t\t"remote_system":\t9.6131221606385147\n'
    '\t\t},\n'
    '\t\t"sender_tcp_congestion":\t"bbr",\n'
    '\t\t"receiver_tcp_congestion":\t"bbr"\n'
    '\t}\n'
    '}\n'
)

STREAM_REFUSED = (
    '{\n'
    '\t"start":\t{\n'
    '\t\t"connected":\t[],\n'
    '\t\t"version":\t"iperf 3.12",\n'
    '\t\t"system_info":\t"Linux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64"\n'
    '\t},\n'
    '\t"intervals":\t[],\n'
    '\t"end":\t{\n'
    '\t},\n'
    '\t"error":\t"unable to connect to server: Connection refused"\n'
    '}\n'
)


def test_ping_pong_figures_are_round_trips_and_rate_is_per_valid_second() -> None:
    result = sockperf.parse_ping_pong(PING_PONG_RTT)
    assert result.seconds == 0.6
    assert result.observations == 19287
    assert result.avg_rtt_us == 31.09
    assert result.p50_us == 27.801
    assert result.p99_us == 47.54
    assert result.percentile(99.9) == 156.803
    assert result.rate == pytest.approx(19287 / 0.6)
    # one message in flight: the rate agrees with the average round trip
    assert result.rate == pytest.approx(1e6 / result.avg_rtt_us, rel=0.01)


def test_half_round_trips_are_refused() -> None:
    with pytest.raises(sockperf.SockperfError, match="--full-rtt"):
        sockperf.parse_ping_pong(PING_PONG_HALF)


def test_failed_ping_pong_says_why() -> None:
    with pytest.raises(sockperf.SockperfError, match="Connection refused"):
        sockperf.parse_ping_pong(PING_PONG_REFUSED)


def test_ping_pong_without_statistics_is_an_error() -> None:
    truncated = PING_PONG_RTT[:PING_PONG_RTT.index("sockperf: [Valid Duration]")]
    with pytest.raises(sockperf.SockperfError, match="no statistics"):
        sockperf.parse_ping_pong(truncated)


def test_missing_percentile_is_named() -> None:
    result = sockperf.parse_ping_pong(PING_PONG_RTT)
    with pytest.raises(sockperf.SockperfError, match=r"99\.5th"):
        result.percentile(99.5)


def test_ping_pong_command_asks_for_round_trips() -> None:
    argv = sockperf.ping_pong_argv("198.18.18.2", 11111, 2.0)
    assert argv[:2] == ["sockperf", "ping-pong"]
    assert "--full-rtt" in argv and "--tcp" in argv
    assert argv[argv.index("-t") + 1] == "2"


def test_stream_is_what_the_receiver_got() -> None:
    stream = iperf.parse_stream(STREAM)
    assert stream.bytes_received == 114883380
    assert stream.seconds == 1.000424
    assert stream.bits_per_second == pytest.approx(918677520.73, rel=1e-6)
    assert stream.gbit == pytest.approx(0.919, abs=0.001)
    assert stream.retransmits == 1
    assert stream.sender_cpu_percent == pytest.approx(14.1455, abs=1e-3)
    assert stream.receiver_cpu_percent == pytest.approx(9.6131, abs=1e-3)


def test_failed_stream_says_why() -> None:
    with pytest.raises(iperf.IperfError, match="Connection refused"):
        iperf.parse_stream(STREAM_REFUSED)


def test_stream_output_that_is_not_json_is_an_error() -> None:
    with pytest.raises(iperf.IperfError, match="not JSON"):
        iperf.parse_stream("iperf3: error - unable to connect to server\n")


def test_stream_report_without_receiver_sum_is_named() -> None:
    with pytest.raises(iperf.IperfError, match=r"end\.sum_received\.seconds"):
        iperf.parse_stream('{"start": {}, "end": {}}')


def test_client_command_caps_the_rate_only_when_asked() -> None:
    assert "--bitrate" not in iperf.client_argv("198.18.18.2", 5201, 3.0)
    capped = iperf.client_argv("198.18.18.2", 5201, 3.0, bitrate="1G")
    assert capped[capped.index("--bitrate") + 1] == "1G"
    assert "--json" in capped
