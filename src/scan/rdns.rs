//! Reverse DNS of peers (`geo.reverse_dns`): PTR queries sent from worker 0's UDP socket.
//!
//! The writer picks the addresses (peers it stores that the `host_domains` cache has no answer
//! for, see [`crate::store::host_domain`]) and hands them to worker 0 through a bounded
//! channel. Worker 0 alone sends, so that `geo.reverse_dns_per_sec` is one token bucket for
//! the whole scan and the resolver's answers come back to the socket that asked; the other
//! workers never see a resolver datagram. The scan driver gives this module every datagram
//! whose source is the resolver's address before sorting the rest by protocol.
//!
//! A query carries a random 16-bit id; an answer is taken only from the resolver's address and
//! port, for an id in the pending table, with the question we asked (so a forged datagram must
//! guess the id and name the address). Only the registrable domain of the PTR name is kept
//! (public suffix list, `psl`): `peer1.dsl.example-isp.co.uk` → `example-isp.co.uk`.
//!
//! Timeouts: [`TIMEOUT_MS`] per attempt, [`ATTEMPTS`] attempts (each a new id), then the
//! address is reported as failed (asked again in a later run). At most [`MAX_PENDING`] queries
//! are outstanding.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use crossbeam_channel::Receiver;
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::engine::Millis;
use crate::store::record::{HostAnswer, HostDomainRecord, Record};

/// Queries outstanding at most.
pub const MAX_PENDING: usize = 64;
/// Time to wait for one answer.
pub const TIMEOUT_MS: Millis = 3_000;
/// Queries per address (the first and the retries) before it counts as failed.
pub const ATTEMPTS: u8 = 2;

/// The `in-addr.arpa` / `ip6.arpa` name of `ip` (RFC 1035 §3.5, RFC 3596 §2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match crate::store::anon::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                name.push('.');
                name.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                name.push('.');
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// A recursive PTR query for `ip` with transaction id `id`.
pub fn ptr_query(id: u16, ip: IpAddr) -> Vec<u8> {
    let name = reverse_name(ip);
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        Name::new_unchecked(&name),
        QTYPE::TYPE(TYPE::PTR),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    // A name of at most 73 bytes in one question: building cannot fail.
    packet.build_bytes_vec().unwrap_or_default()
}

/// The registrable domain ("eTLD+1") of a host name, lower case; `None` for a name that is a
/// public suffix itself or not a valid name.
pub fn registrable_domain(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.split('.').any(|l| l.is_empty()) {
        return None;
    }
    psl::domain_str(&name).map(str::to_string)
}

/// What an answer datagram says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An answer for query `id` about `question` (the reverse name, lower case).
    Answer {
        id: u16,
        question: String,
        answer: HostAnswer,
    },
    /// Not a DNS response we can read.
    Malformed,
}

/// Reads a response: the registrable domain of the first PTR record for the question, no name
/// (NXDOMAIN, or no PTR record), or failed (any other error code, a truncated answer).
pub fn parse_reply(bytes: &[u8]) -> Reply {
    let Ok(packet) = Packet::parse(bytes) else {
        return Reply::Malformed;
    };
    if !packet.has_flags(PacketFlag::RESPONSE) {
        return Reply::Malformed;
    }
    let [question] = packet.questions.as_slice() else {
        return Reply::Malformed;
    };
    let question = question.qname.to_string().to_ascii_lowercase();
    let answer = match packet.rcode() {
        RCODE::NameError => HostAnswer::NoName,
        RCODE::NoError if packet.has_flags(PacketFlag::TRUNCATION) => HostAnswer::Failed,
        RCODE::NoError => {
            let ptr = packet.answers.iter().find_map(|rr| match &rr.rdata {
                RData::PTR(ptr) if rr.name.to_string().eq_ignore_ascii_case(&question) => {
                    Some(ptr.0.to_string())
                }
                _ => None,
            });
            match ptr.as_deref().and_then(registrable_domain) {
                Some(domain) => HostAnswer::Domain(domain),
                None => HostAnswer::NoName,
            }
        }
        _ => HostAnswer::Failed,
    };
    Reply::Answer {
        id: packet.id(),
        question,
        answer,
    }
}

/// Counters of the lookups (worker 0), shown at the end of a run.
#[derive(Debug, Default)]
pub struct ReverseDnsCounters {
    pub queries: std::sync::atomic::AtomicU64,
    pub names: std::sync::atomic::AtomicU64,
    pub no_names: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Datagrams from the resolver that matched no pending query (late, forged or malformed).
    pub unmatched: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ip: IpAddr,
    sent_at: Millis,
    attempts: u8,
}

/// Worker 0's reverse DNS client (see the module docs). Time comes in as arguments.
pub struct ReverseDns {
    resolver: SocketAddr,
    requests: Receiver<IpAddr>,
    per_sec: f64,
    tokens: f64,
    refilled_at: Option<Millis>,
    pending: HashMap<u16, Pending>,
    /// Timed-out addresses to ask again (before new ones).
    retry: Vec<(IpAddr, u8)>,
    /// Keyed hash of a counter: ids an off-path sender cannot predict.
    ids: RandomState,
    id_seq: u64,
    /// Unix milliseconds at engine time 0, to stamp records.
    epoch_unix_ms: i64,
    pub counters: std::sync::Arc<ReverseDnsCounters>,
}

impl ReverseDns {
    /// Asks `resolver` about the addresses `requests` brings, `per_sec` queries a second at most.
    pub fn new(
        resolver: SocketAddr,
        per_sec: u32,
        requests: Receiver<IpAddr>,
        epoch_unix_ms: i64,
    ) -> ReverseDns {
        ReverseDns {
            resolver,
            requests,
            per_sec: f64::from(per_sec.max(1)),
            tokens: 1.0,
            refilled_at: None,
            pending: HashMap::new(),
            retry: Vec::new(),
            ids: RandomState::new(),
            id_seq: 0,
            epoch_unix_ms,
            counters: Default::default(),
        }
    }

    /// Whether a datagram from `from` is for this module.
    pub fn is_resolver(&self, from: SocketAddr) -> bool {
        from == self.resolver
    }

    fn new_id(&mut self) -> Option<u16> {
        // Tries a few ids: with MAX_PENDING of 65536 taken, a collision is rare.
        for _ in 0..8 {
            self.id_seq += 1;
            let id = self.ids.hash_one(self.id_seq) as u16;
            if !self.pending.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// The socket to send from: one of the resolver's family that can reach it (a socket bound
    /// to loopback reaches only loopback).
    fn local_for(&self, locals: &[SocketAddr]) -> Option<SocketAddr> {
        let resolver = self.resolver.ip();
        locals.iter().copied().find(|l| {
            l.is_ipv4() == self.resolver.is_ipv4()
                && (l.ip().is_unspecified() || l.ip().is_loopback() == resolver.is_loopback())
        })
    }

    /// An answer from the resolver: the record for the writer, when it answers a pending query.
    pub fn datagram(&mut self, now: Millis, bytes: &[u8]) -> Option<Record> {
        use std::sync::atomic::Ordering::Relaxed;
        let Reply::Answer {
            id,
            question,
            answer,
        } = parse_reply(bytes)
        else {
            self.counters.unmatched.fetch_add(1, Relaxed);
            return None;
        };
        let matches = self
            .pending
            .get(&id)
            .is_some_and(|p| reverse_name(p.ip) == question);
        if !matches {
            self.counters.unmatched.fetch_add(1, Relaxed);
            return None;
        }
        let pending = self.pending.remove(&id)?;
        if answer == HostAnswer::Failed && pending.attempts < ATTEMPTS {
            self.retry.push((pending.ip, pending.attempts));
            return None;
        }
        Some(self.finish(now, pending.ip, answer))
    }

    fn finish(&self, now: Millis, ip: IpAddr, answer: HostAnswer) -> Record {
        use std::sync::atomic::Ordering::Relaxed;
        match answer {
            HostAnswer::Domain(_) => &self.counters.names,
            HostAnswer::NoName => &self.counters.no_names,
            HostAnswer::Failed => &self.counters.failed,
        }
        .fetch_add(1, Relaxed);
        Record::HostDomain(HostDomainRecord {
            at: self.epoch_unix_ms + now as i64,
            ip,
            answer,
        })
    }

    /// Expires pending queries (records for addresses out of attempts go to `done`) and sends
    /// new ones as the rate allows, from one of `locals` through `send(local, to, bytes)`
    /// (false: no room now).
    pub fn poll(
        &mut self,
        now: Millis,
        locals: &[SocketAddr],
        mut send: impl FnMut(SocketAddr, SocketAddr, &[u8]) -> bool,
        mut done: impl FnMut(Record),
    ) {
        let expired: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.sent_at) >= TIMEOUT_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            if p.attempts < ATTEMPTS {
                self.retry.push((p.ip, p.attempts));
            } else {
                done(self.finish(now, p.ip, HostAnswer::Failed));
            }
        }
        let elapsed = match self.refilled_at {
            Some(at) => now.saturating_sub(at),
            None => 0,
        };
        self.refilled_at = Some(now);
        // The bucket holds one poll's worth (the worker polls at least every 50 ms), at least
        // one query: queries are spread evenly, never a second's worth at once.
        let burst = (self.per_sec / 20.0).max(1.0);
        self.tokens = (self.tokens + elapsed as f64 * self.per_sec / 1000.0).min(burst);
        let Some(local) = self.local_for(locals) else {
            return;
        };
        while self.tokens >= 1.0 && self.pending.len() < MAX_PENDING {
            let (ip, attempts) = match self.retry.pop() {
                Some(r) => r,
                None => match self.requests.try_recv() {
                    Ok(ip) => (ip, 0),
                    Err(_) => break,
                },
            };
            let Some(id) = self.new_id() else {
                self.retry.push((ip, attempts));
                break;
            };
            if !send(local, self.resolver, &ptr_query(id, ip)) {
                self.retry.push((ip, attempts));
                break;
            }
            self.tokens -= 1.0;
            self.counters
                .queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.pending.insert(
                id,
                Pending {
                    ip,
                    sent_at: now,
                    attempts: attempts + 1,
                },
            );
        }
    }
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn system_resolver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        // A scoped IPv6 address ("fe80::1%eth0") can't be told to a socket here: skipped.
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// `geo.dns_resolver`, or the system's resolver; the error says what to set.
pub fn resolver(configured: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(a) = configured {
        return Ok(a);
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| {
        format!(
            "geo.reverse_dns: geo.dns_resolver is \"\" and /etc/resolv.conf cannot be read ({e}); set geo.dns_resolver"
        )
    })?;
    system_resolver(&text).ok_or_else(|| {
        "geo.reverse_dns: geo.dns_resolver is \"\" and /etc/resolv.conf names no usable nameserver; set geo.dns_resolver"
            .to_string()
    })
}

/// The resolver must be reachable from a UDP socket of the scan (one per `net.listen` address).
pub fn check_reachable(resolver: SocketAddr, listen: &[SocketAddr]) -> Result<(), String> {
    let ok = listen.iter().any(|l| {
        l.is_ipv4() == resolver.is_ipv4()
            && (l.ip().is_unspecified() || l.ip().is_loopback() == resolver.ip().is_loopback())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "geo.reverse_dns: the resolver {resolver} cannot be reached from any net.listen address \
             ({listen:?}): queries leave from the scan's UDP sockets, so net.listen needs an address of \
             the resolver's family (and not a loopback one for a remote resolver)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::PTR;
    use simple_dns::ResourceRecord;

    fn reply(id: u16, question: &str, rcode: RCODE, ptr: Option<&str>) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        *p.rcode_mut() = rcode;
        p.questions.push(Question::new(
            Name::new_unchecked(question),
            QTYPE::TYPE(TYPE::PTR),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        if let Some(name) = ptr {
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(question),
                CLASS::IN,
                60,
                RData::PTR(PTR(Name::new_unchecked(name))),
            ));
        }
        p.build_bytes_vec().unwrap()
    }

    #[test]
    fn reverse_names_follow_rfc_1035_and_3596() {
        assert_eq!(
            reverse_name("81.2.69.142".parse().unwrap()),
            "142.69.2.81.in-addr.arpa"
        );
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(
            reverse_name("::ffff:10.1.2.3".parse().unwrap()),
            "3.2.1.10.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn a_query_is_a_recursive_ptr_question_for_the_reverse_name() {
        let bytes = ptr_query(0xbeef, "192.0.2.7".parse().unwrap());
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(p.id(), 0xbeef);
        assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
        assert!(!p.has_flags(PacketFlag::RESPONSE));
        assert_eq!(p.questions.len(), 1);
        assert_eq!(p.questions[0].qname.to_string(), "7.2.0.192.in-addr.arpa");
        assert_eq!(p.questions[0].qtype, QTYPE::TYPE(TYPE::PTR));
    }

    #[test]
    fn registrable_domains_come_from_the_public_suffix_list() {
        for (name, domain) in [
            ("peer1.dsl.example-isp.co.uk", Some("example-isp.co.uk")),
            ("PEER1.DSL.Example-ISP.co.uk.", Some("example-isp.co.uk")),
            ("node7.fast-seedbox.com.au", Some("fast-seedbox.com.au")),
            ("a.b.c.example.com", Some("example.com")),
            ("example.com", Some("example.com")),
            ("co.uk", None),
            ("", None),
            ("a..example.com", None),
        ] {
            assert_eq!(registrable_domain(name).as_deref(), domain, "{name}");
        }
    }

    #[test]
    fn replies_give_a_domain_no_name_or_failure() {
        let q = "4.3.2.1.in-addr.arpa";
        let domain = |d: &str| Reply::Answer {
            id: 7,
            question: q.into(),
            answer: HostAnswer::Domain(d.into()),
        };
        assert_eq!(
            parse_reply(&reply(
                7,
                q,
                RCODE::NoError,
                Some("peer1.dsl.example-isp.co.uk")
            )),
            domain("example-isp.co.uk")
        );
        let answer = |bytes: Vec<u8>| match parse_reply(&bytes) {
            Reply::Answer { answer, .. } => answer,
            Reply::Malformed => panic!("malformed"),
        };
        assert_eq!(
            answer(reply(7, q, RCODE::NameError, None)),
            HostAnswer::NoName
        );
        assert_eq!(
            answer(reply(7, q, RCODE::NoError, None)),
            HostAnswer::NoName
        );
        assert_eq!(
            answer(reply(7, q, RCODE::ServerFailure, None)),
            HostAnswer::Failed
        );
        // A query is not an answer; garbage is not either.
        assert_eq!(
            parse_reply(&ptr_query(7, "1.2.3.4".parse().unwrap())),
            Reply::Malformed
        );
        assert_eq!(parse_reply(b"\x00\x07garbage"), Reply::Malformed);
        assert_eq!(parse_reply(b""), Reply::Malformed);
    }

    #[test]
    fn the_system_resolver_is_the_first_usable_nameserver() {
        let conf = "# generated\nsearch example\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\nnameserver 9.9.9.9\n";
        assert_eq!(
            system_resolver(conf),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(system_resolver("search x\n"), None);
    }

    #[test]
    fn a_resolver_must_be_reachable_from_a_listen_address() {
        let any: SocketAddr = "0.0.0.0:6881".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let v6: SocketAddr = "[::]:6881".parse().unwrap();
        let remote: SocketAddr = "9.9.9.9:53".parse().unwrap();
        let local: SocketAddr = "127.0.0.53:53".parse().unwrap();
        assert!(check_reachable(remote, &[any]).is_ok());
        assert!(check_reachable(local, &[lo]).is_ok());
        let e = check_reachable(remote, &[lo, v6]).unwrap_err();
        assert!(e.contains("9.9.9.9:53") && e.contains("net.listen"), "{e}");
        assert!(check_reachable(local, &[]).is_err());
    }

    const RESOLVER: &str = "127.0.0.53:53";

    /// Polls `client` at `now`, returning the queries sent (id, question) and records done.
    fn poll(client: &mut ReverseDns, now: Millis) -> (Vec<(u16, String)>, Vec<Record>) {
        let locals: [SocketAddr; 2] = [
            "[::]:7000".parse().unwrap(),
            "0.0.0.0:7000".parse().unwrap(),
        ];
        let mut sent = Vec::new();
        let mut done = Vec::new();
        client.poll(
            now,
            &locals,
            |local, to, bytes| {
                assert_eq!(local, locals[1], "the resolver's family");
                assert_eq!(to, RESOLVER.parse().unwrap());
                let p = Packet::parse(bytes).unwrap();
                sent.push((p.id(), p.questions[0].qname.to_string()));
                true
            },
            |r| done.push(r),
        );
        (sent, done)
    }

    fn client(per_sec: u32, ips: &[IpAddr]) -> ReverseDns {
        let (tx, rx) = crossbeam_channel::unbounded();
        for ip in ips {
            tx.send(*ip).unwrap();
        }
        ReverseDns::new(RESOLVER.parse().unwrap(), per_sec, rx, 1_000_000)
    }

    #[test]
    fn queries_keep_to_the_rate() {
        let ips: Vec<IpAddr> = (1..=200)
            .map(|n| IpAddr::from([10, 0, 0, n as u8]))
            .collect();
        let mut c = client(5, &ips);
        let mut sent = Vec::new();
        for t in (0..=2_000).step_by(10) {
            sent.extend(poll(&mut c, t).0);
        }
        // One at once, then 5 a second: 1 + 10 in two seconds.
        assert_eq!(sent.len(), 11, "{sent:?}");
        let ids: std::collections::HashSet<u16> = sent.iter().map(|s| s.0).collect();
        assert_eq!(
            ids.len(),
            sent.len(),
            "ids are unique among pending queries"
        );
    }

    #[test]
    fn an_answer_counts_only_for_a_pending_id_and_its_question() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut c = client(100, &[ip]);
        let (sent, _) = poll(&mut c, 0);
        let [(id, question)] = sent.as_slice() else {
            panic!("{sent:?}")
        };
        assert_eq!(question, "3.2.1.10.in-addr.arpa");
        let name = Some("peer1.dsl.example-isp.co.uk");
        assert_eq!(
            c.datagram(
                5,
                &reply(id.wrapping_add(1), question, RCODE::NoError, name)
            ),
            None
        );
        assert_eq!(
            c.datagram(
                5,
                &reply(*id, "4.2.1.10.in-addr.arpa", RCODE::NoError, name)
            ),
            None
        );
        assert_eq!(c.datagram(5, b"junk"), None);
        assert_eq!(
            c.counters
                .unmatched
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(
            c.datagram(5, &reply(*id, question, RCODE::NoError, name)),
            Some(Record::HostDomain(HostDomainRecord {
                at: 1_000_005,
                ip,
                answer: HostAnswer::Domain("example-isp.co.uk".into())
            }))
        );
        // Answered once only.
        assert_eq!(
            c.datagram(6, &reply(*id, question, RCODE::NoError, name)),
            None
        );
    }

    #[test]
    fn silence_and_server_failures_are_retried_then_reported_as_failed() {
        let ip: IpAddr = "10.9.9.9".parse().unwrap();
        let mut c = client(100, &[ip]);
        let (first, _) = poll(&mut c, 0);
        assert_eq!(first.len(), 1);
        assert!(
            poll(&mut c, TIMEOUT_MS - 1).0.is_empty(),
            "not before the timeout"
        );
        let (second, done) = poll(&mut c, TIMEOUT_MS);
        assert!(done.is_empty());
        assert_eq!(second.len(), 1, "asked again");
        assert_eq!(second[0].1, first[0].1);
        // SERVFAIL to the last attempt: failed.
        let r = c.datagram(
            TIMEOUT_MS + 1,
            &reply(second[0].0, &second[0].1, RCODE::ServerFailure, None),
        );
        assert!(
            matches!(
                r,
                Some(Record::HostDomain(HostDomainRecord {
                    answer: HostAnswer::Failed,
                    ..
                }))
            ),
            "{r:?}"
        );

        // Silence to every attempt: failed after the last timeout.
        let mut c = client(100, &[ip]);
        poll(&mut c, 0);
        poll(&mut c, TIMEOUT_MS);
        let (again, done) = poll(&mut c, 2 * TIMEOUT_MS);
        assert!(again.is_empty());
        assert!(
            matches!(
                done.as_slice(),
                [Record::HostDomain(HostDomainRecord {
                    answer: HostAnswer::Failed,
                    ..
                })]
            ),
            "{done:?}"
        );
    }
}
