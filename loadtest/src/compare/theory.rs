//! What each mode should cost in theory (notes §3.5), and why a measurement differs.

use crate::modes::ModeResult;
use crate::report::num;

pub(super) fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// The theory of notes §3.5 for one mode, given the push baseline `b` (ms): predicted
/// (mean latency ms, p99 ms, HTTP req/s, bytes per delivered message).
pub(super) struct Theory {
    pub(super) mean: f64,
    pub(super) p99: f64,
    pub(super) req_s: f64,
    pub(super) bytes_per_msg: f64,
    pub(super) why: String,
}

pub(super) fn theory(r: &ModeResult, b: f64) -> Theory {
    let n = r.subscribed as f64;
    let lam = r.lambda();
    let delivered = r.delivered.max(1) as f64;
    let exchanges = r.http_requests.max(1) as f64;
    let head = (r.bytes.up_headers + r.bytes.down_headers) as f64 / exchanges;
    let event = r.bytes.down_payload as f64 / delivered;
    match (r.poll_interval_s, r.long_poll_wait_s) {
        (Some(t), _) => {
            // herald.js polls again `pollInterval` (T) after each answer, as the harness does:
            // the period is T plus the answer's round trip G ≈ 2·B on loopback.
            let g = 2.0 * b / 1000.0;
            let period = t + g;
            let pm = period * 1000.0;
            // Body bytes: events plus the answer's envelope; headers per exchange.
            let per_msg = head / (lam * period).max(f64::MIN_POSITIVE) + event;
            Theory {
                mean: b + pm / 2.0,
                p99: b + 0.99 * pm,
                req_s: n / period,
                bytes_per_msg: per_msg,
                why: format!(
                    "poll (the next request T after each answer, as herald.js): period P = T + G (G ≈ 2B), \
                     B + U(0,P), N/P requests/s, H/(λP) + E bytes (λ = {} ev/s per client)",
                    num(lam)
                ),
            }
        }
        (None, Some(_)) => {
            // G: the re-request gap, one round trip ≈ 2·B on loopback.
            let g = 2.0 * b / 1000.0;
            let per_resp = 1.0 + lam * g;
            Theory {
                mean: b + lam * g * g / (2.0 * (1.0 + lam * g)) * 1000.0,
                p99: b + g * 1000.0,
                req_s: n * lam / per_resp,
                bytes_per_msg: head / per_resp + event,
                why: "long-poll: B (+ re-request gap G ≈ 2B), Nλ/(1+λG) requests/s, H/(1+λG) + E bytes".into(),
            }
        }
        _ if r.transport == "WebSocket" => Theory {
            mean: b,
            p99: f64::NAN,
            req_s: 0.0,
            bytes_per_msg: event + 2.0,
            why: "WebSocket: latency B, no requests, E + 2 B frame header".into(),
        },
        _ => {
            // "id: <room>:<seq>\n" + "data: " + "\n\n", and ~6 B of chunked framing per event.
            let seq_digits = ((r.published as f64 / r.rooms.max(1) as f64 / 2.0).max(1.0))
                .log10()
                .floor()
                + 1.0;
            Theory {
                mean: b,
                p99: f64::NAN,
                req_s: 0.0,
                bytes_per_msg: event + 4.0 + r.room_name_len as f64 + 1.0 + seq_digits + 1.0 + 6.0 + 2.0 + 6.0,
                why: "SSE: latency B, no requests, E + id/data fields + chunk framing".into(),
            }
        }
    }
}

/// Why a measurement sits more than 20% from its model, for the cases we understand.
pub(super) fn explain(r: &ModeResult, t: &Theory, b: f64) -> String {
    let off = |m: f64, p: f64| p.is_finite() && p > 0.0 && !(0.8..=1.2).contains(&(m / p));
    let mut why = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = r.gateway_cpu_pct_mean + r.harness_cpu_pct;
    if busy > 75.0 * cores {
        why.push(format!(
            "CPU-bound: gateway {:.0}% + harness {:.0}% of {cores} cores, so requests queue and each answer \
             carries several events (RFC 6202's batching under load)",
            r.gateway_cpu_pct_mean, r.harness_cpu_pct
        ));
    }
    if !why.is_empty() {
        return why.join("; ");
    }
    if off(r.latency_ms.mean, t.mean) {
        why.push(match (r.poll_interval_s, r.long_poll_wait_s) {
            (None, Some(_)) => {
                let per_room = r.subscribed as f64 / r.rooms.max(1) as f64;
                let us = r.cpu_s_per_msg() * 1e6;
                format!(
                    "latency, a fit (it uses this run's own CPU per answer, so it explains the measurement \
                     rather than predicting it): each event answers all {per_room:.0} parked requests of its \
                     room at once, and an answer costs the gateway {us:.0} µs of CPU, so the middle of the \
                     burst waits about {} ms more than B ({} ms, the WebSocket path); the next request must \
                     also arrive first",
                    num(per_room / 2.0 * us / 1000.0),
                    num(b)
                )
            }
            (None, None) => format!(
                "latency: the SSE path (event, chunk, HTTP body) differs from WebSocket's; at B = {} ms a \
                 fraction of a millisecond is over 20%",
                num(b)
            ),
            _ => "latency: polls are not perfectly uniform over T (ramp-up phases)".into(),
        });
    }
    if off(r.req_per_s(), t.req_s) {
        why.push("requests: the window includes the drain after publishing, when long-polls sit idle".into());
    }
    if off(r.bytes_per_msg(), t.bytes_per_msg) {
        why.push("bytes: answers carry a different number of events than the model's 1 + λG".into());
    }
    why.join("; ")
}
