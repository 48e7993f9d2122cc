//! A small authoritative DNS server for the tests: UDP and TCP on one
//! 127.0.0.1 port, answering TXT, A, AAAA and MX from an in-memory table
//! (NXDOMAIN for unknown names, an empty answer for a known name without
//! records of the type asked). A name can be made silent: its queries get no
//! answer at all (to provoke resolver timeouts). Messages are parsed and
//! written with hickory-proto (the relay's resolver's own codec).

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// The records, by lower-case name without the final dot.
#[derive(Default)]
struct Zone {
    txt: HashMap<String, Vec<String>>,
    a: HashMap<String, Vec<Ipv4Addr>>,
    aaaa: HashMap<String, Vec<Ipv6Addr>>,
    mx: HashMap<String, Vec<(u16, String)>>,
    silent: HashSet<String>,
    servfail: HashSet<String>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A running test DNS server.
pub struct Dns {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Dns {
    /// Binds UDP and TCP on one free 127.0.0.1 port (a few tries).
    pub async fn start() -> Dns {
        for _ in 0..20 {
            if let Ok(dns) = Dns::start_on("127.0.0.1:0".parse().unwrap()).await {
                return dns;
            }
        }
        panic!("no port free for UDP and TCP at once");
    }

    /// Binds UDP and TCP on `addr` (port 0: the UDP socket's port for both).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Dns> {
        let udp = UdpSocket::bind(addr).await?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr).await?;
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let udp_task = tokio::spawn(serve_udp(udp, zone.clone(), queries.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone.clone(), queries.clone()));
        Ok(Dns {
            addr,
            zone,
            queries,
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// Adds a TXT record (one string; split into 255-byte pieces on the wire).
    pub fn txt(&self, name: &str, value: &str) -> &Self {
        let mut z = self.zone.lock().unwrap();
        z.txt.entry(key(name)).or_default().push(value.to_owned());
        self
    }

    /// Adds an A record.
    pub fn a(&self, name: &str, ip: Ipv4Addr) -> &Self {
        let mut z = self.zone.lock().unwrap();
        z.a.entry(key(name)).or_default().push(ip);
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(&self, name: &str, ip: Ipv6Addr) -> &Self {
        let mut z = self.zone.lock().unwrap();
        z.aaaa.entry(key(name)).or_default().push(ip);
        self
    }

    /// Adds an MX record.
    pub fn mx(&self, name: &str, preference: u16, exchange: &str) -> &Self {
        let mut z = self.zone.lock().unwrap();
        z.mx.entry(key(name))
            .or_default()
            .push((preference, exchange.to_owned()));
        self
    }

    /// Queries for `name` (any type) get no answer, ever.
    pub fn silent(&self, name: &str) -> &Self {
        self.zone.lock().unwrap().silent.insert(key(name));
        self
    }

    /// Queries for `name` (any type) get SERVFAIL (a broken authoritative
    /// server: a temporary error, not an answer).
    pub fn servfail(&self, name: &str) -> &Self {
        self.zone.lock().unwrap().servfail.insert(key(name));
        self
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops answering.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer to the wire query `q`, or `None` to stay silent.
fn answer(zone: &Mutex<Zone>, q: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(q).ok()?;
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.message_type = MessageType::Response;
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    let Some(query) = req.queries.first().cloned() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    let name = query.name().clone();
    let k = key(&name.to_ascii());
    let z = zone.lock().unwrap();
    if z.silent.contains(&k) {
        return None;
    }
    if z.servfail.contains(&k) {
        resp.add_query(query);
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp.to_vec().ok();
    }
    let known = z.txt.contains_key(&k)
        || z.a.contains_key(&k)
        || z.aaaa.contains_key(&k)
        || z.mx.contains_key(&k);
    let mut answers = Vec::new();
    match query.query_type() {
        RecordType::TXT => {
            for v in z.txt.get(&k).into_iter().flatten() {
                let pieces: Vec<String> = v
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                answers.push(RData::TXT(TXT::new(pieces)));
            }
        }
        RecordType::A => {
            for ip in z.a.get(&k).into_iter().flatten() {
                answers.push(RData::A(A(*ip)));
            }
        }
        RecordType::AAAA => {
            for ip in z.aaaa.get(&k).into_iter().flatten() {
                answers.push(RData::AAAA(AAAA(*ip)));
            }
        }
        RecordType::MX => {
            for (p, host) in z.mx.get(&k).into_iter().flatten() {
                let exchange = Name::from_ascii(format!("{}.", key(host))).ok()?;
                answers.push(RData::MX(MX::new(*p, exchange)));
            }
        }
        _ => {}
    }
    drop(z);
    resp.add_query(query);
    if !known {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    for rdata in answers {
        resp.add_answer(Record::from_rdata(name.clone(), 60, rdata));
    }
    resp.to_vec().ok()
}

async fn serve_udp(sock: UdpSocket, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        if let Some(reply) = answer(&zone, &buf[..n]) {
            let _ = sock.send_to(&reply, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, queries: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let zone = zone.clone();
        let queries = queries.clone();
        tokio::spawn(async move {
            // A bounded number of queries per connection, each within 10 s.
            for _ in 0..100 {
                let mut len = [0u8; 2];
                let read = async {
                    stream.read_exact(&mut len).await?;
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    stream.read_exact(&mut q).await?;
                    Ok::<_, std::io::Error>(q)
                };
                let Ok(Ok(q)) = tokio::time::timeout(Duration::from_secs(10), read).await else {
                    return;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let Some(reply) = answer(&zone, &q) else {
                    continue;
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
