//! A small loopback DNS server for tests and benchmarks of `[auth]` and
//! `[[dnsbl]]` (the one tests/common/dns.rs runs in-process), serving a zone
//! from a TOML file:
//!
//! ```toml
//! listen = "127.0.0.1:5353"     # optional; default 127.0.0.1:0 (printed)
//! seconds = 3600                # optional; it exits after this long (default 1 h)
//! silent = ["slow.example"]     # optional: names that never get an answer
//!
//! [[record]]
//! name = "example.org"
//! type = "TXT"                  # TXT, A, AAAA or MX ("10 mx.example.org")
//! value = "v=spf1 ip4:127.0.0.1 -all"
//! ```
//!
//! `cargo run --example test_dns -- zone.toml` prints `listening on ADDR`;
//! point the relay at it with `[auth] resolver = "ADDR"`. Binds only where
//! told (use a loopback address).

#[allow(dead_code)]
#[path = "../tests/common/dns.rs"]
mod dns;

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_seconds")]
    seconds: u64,
    #[serde(default)]
    silent: Vec<String>,
    #[serde(default)]
    record: Vec<Rec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn default_seconds() -> u64 {
    3600
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: test_dns ZONE.toml")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let zone: ZoneFile = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let server = dns::Dns::start_on(zone.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", zone.listen))?;
    for name in &zone.silent {
        server.silent(name);
    }
    for (i, r) in zone.record.iter().enumerate() {
        let bad = |what: &str| format!("record[{i}].value: {what}");
        match r.kind.to_ascii_uppercase().as_str() {
            "TXT" => {
                server.txt(&r.name, &r.value);
            }
            "A" => {
                server.a(
                    &r.name,
                    r.value.parse().map_err(|_| bad("not an IPv4 address"))?,
                );
            }
            "AAAA" => {
                server.aaaa(
                    &r.name,
                    r.value.parse().map_err(|_| bad("not an IPv6 address"))?,
                );
            }
            "MX" => {
                let (pref, host) = r
                    .value
                    .split_once(' ')
                    .ok_or_else(|| bad("MX is \"PREFERENCE HOST\""))?;
                server.mx(
                    &r.name,
                    pref.parse().map_err(|_| bad("bad preference"))?,
                    host,
                );
            }
            other => {
                return Err(format!(
                    "record[{i}].type: {other:?} is not TXT, A, AAAA or MX"
                ));
            }
        }
    }
    println!("listening on {}", server.addr);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(zone.seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("answered {} queries", server.queries());
    Ok(())
}
