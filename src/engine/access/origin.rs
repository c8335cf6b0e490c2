//! The `Origin` allow-list (`allowed_origins`), checked on the upgrade
//! request before the 101, so a page on a site that is not listed cannot
//! open a WebSocket to the node with a visitor's browser.
//!
//! Entries (host names compare case-insensitively; a port equal to the
//! scheme's default, 80 for `http`/`ws` and 443 for `https`/`wss`, is the
//! same as no port):
//! - `https://app.example.com`, `http://localhost:3000`: exactly that
//!   scheme, host and port.
//! - `https://*.example.com`: any subdomain of `example.com`, one or more
//!   labels deep (`a.example.com`, `a.b.example.com`), with that scheme
//!   and port. Never `example.com` itself: list it too if it should pass.
//!   The `*` must be the whole leftmost label, and at least two labels
//!   must follow it (`*.com` is refused: it would admit every site under
//!   a top-level domain).
//! - `app.example.com`, `*.example.com`, `localhost:3000`: the same
//!   without a scheme, matching both `https` and `http`. Write the scheme
//!   to allow only `https`.
//! - `null`: the literal `Origin: null` (sandboxed frames, `file://`
//!   pages), refused unless listed.
//! - `*`: any origin (the same as an empty list).
//!
//! An entry with a path, query, user info or any other character is a
//! configuration error (`https://app.example.com/` is refused: an origin
//! has no path). A request without `Origin` is allowed: it does not come
//! from a browser page, and non-browser clients can send any `Origin`
//! they like, so the list only protects browser users. A malformed
//! `Origin` is refused whenever the list is not empty.

/// The scheme's default port, for normalising `:443` and `:80` away.
fn default_port(scheme: &[u8]) -> Option<u16> {
    if scheme.eq_ignore_ascii_case(b"https") || scheme.eq_ignore_ascii_case(b"wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"ws") {
        Some(80)
    } else {
        None
    }
}

/// What a rule says about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// Exactly this host (lower case).
    Exact(Box<str>),
    /// Any host ending in `.` + this suffix (lower case), with at least
    /// one label before it.
    Subdomain(Box<str>),
}

/// One `allowed_origins` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginRule {
    /// Lower case; `None` for `http` or `https`.
    scheme: Option<Box<str>>,
    host: HostRule,
    /// An explicit non-default port; `None` for the scheme's default.
    port: Option<u16>,
}

/// The parts of an origin: `scheme://host[:port]`, borrowed.
struct Parts<'a> {
    scheme: &'a [u8],
    host: &'a [u8],
    /// The port as written, if any.
    port: Option<u16>,
}

/// Where `://` starts, if anywhere.
fn scheme_end(s: &[u8]) -> Option<usize> {
    s.windows(3).position(|w| w == b"://")
}

/// A letter, then letters, digits, `+`, `-` or `.` (RFC 3986).
fn valid_scheme(scheme: &[u8]) -> bool {
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Splits `scheme://host[:port]`; `None` if it has anything else.
fn split_origin(s: &[u8]) -> Option<Parts<'_>> {
    let sep = scheme_end(s)?;
    let (scheme, rest) = (&s[..sep], &s[sep + 3..]);
    if !valid_scheme(scheme) {
        return None;
    }
    let (host, port) = split_host_port(rest)?;
    Some(Parts { scheme, host, port })
}

/// Splits `host[:port]` (an IPv6 host in brackets); `None` if the host has
/// characters no host name has, or the port is not 1–65535.
fn split_host_port(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, port) = if s.first() == Some(&b'[') {
        let end = s.iter().position(|&b| b == b']')?;
        let (host, after) = s.split_at(end + 1);
        let inner = &host[1..end];
        let v6 = std::str::from_utf8(inner).ok()?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        (host, after)
    } else {
        let end = s.iter().position(|&b| b == b':').unwrap_or(s.len());
        let (host, after) = s.split_at(end);
        if !valid_hostname(host) {
            return None;
        }
        (host, after)
    };
    let port = match port {
        [] => None,
        [b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return None,
    };
    Some((host, port))
}

/// Letters, digits, `-` and `_` in dot-separated, non-empty labels (a
/// name or an IPv4 address), at most 253 bytes.
fn valid_hostname(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let port: u32 = digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(port).ok().filter(|&p| p != 0)
}

impl OriginRule {
    fn parse(entry: &str) -> Result<OriginRule, String> {
        let s = entry.trim().as_bytes();
        let (scheme, host_port) = match scheme_end(s) {
            Some(sep) if valid_scheme(&s[..sep]) => (Some(&s[..sep]), &s[sep + 3..]),
            Some(_) => return Err("the scheme must be letters, digits, + - . (e.g. https)".into()),
            None => (None, s),
        };
        if host_port.contains(&b'/') || host_port.contains(&b'?') || host_port.contains(&b'#') {
            return Err("an origin has no path: write scheme://host[:port] only".into());
        }
        if host_port.contains(&b'@') {
            return Err("an origin has no user info".into());
        }
        let (wild, host_port) = match host_port.strip_prefix(b"*.") {
            Some(rest) => (true, rest),
            None => (false, host_port),
        };
        if host_port.contains(&b'*') {
            return Err("a wildcard must be the whole leftmost label: *.example.com".into());
        }
        let (host, port) = split_host_port(host_port)
            .ok_or("not a host[:port] (letters, digits, - _ . labels or [IPv6]; port 1-65535)")?;
        if wild && (host.starts_with(b"[") || host.split(|&b| b == b'.').count() < 2) {
            return Err(
                "a wildcard needs at least two labels after it (*.example.com, not *.com)".into(),
            );
        }
        let host = std::str::from_utf8(host)
            .map_err(|_| "not ASCII".to_string())?
            .to_ascii_lowercase()
            .into_boxed_str();
        let scheme = scheme.map(|sc| {
            String::from_utf8_lossy(sc)
                .to_ascii_lowercase()
                .into_boxed_str()
        });
        // `:443` on https is no port at all; a scheme-less rule keeps its
        // port and compares it with the origin's effective port.
        let port = match (&scheme, port) {
            (Some(sc), Some(p)) if default_port(sc.as_bytes()) == Some(p) => None,
            (_, p) => p,
        };
        Ok(OriginRule {
            scheme,
            host: if wild {
                HostRule::Subdomain(host)
            } else {
                HostRule::Exact(host)
            },
            port,
        })
    }

    fn matches(&self, o: &Parts<'_>) -> bool {
        let scheme_ok = match &self.scheme {
            Some(sc) => o.scheme.eq_ignore_ascii_case(sc.as_bytes()),
            None => {
                o.scheme.eq_ignore_ascii_case(b"https") || o.scheme.eq_ignore_ascii_case(b"http")
            }
        };
        if !scheme_ok {
            return false;
        }
        let default = default_port(o.scheme);
        let port_ok = match self.port {
            // An explicit port: the origin's effective port must be it.
            Some(p) => o.port.or(default) == Some(p),
            // The default port: none written, or the default written.
            None => o.port.is_none() || o.port == default,
        };
        port_ok
            && match &self.host {
                HostRule::Exact(h) => o.host.eq_ignore_ascii_case(h.as_bytes()),
                HostRule::Subdomain(suffix) => {
                    let suffix = suffix.as_bytes();
                    o.host.len() > suffix.len() + 1 && {
                        let (sub, tail) = o.host.split_at(o.host.len() - suffix.len());
                        tail.eq_ignore_ascii_case(suffix) && sub.last() == Some(&b'.')
                    }
                }
            }
    }
}

/// The parsed `allowed_origins` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Any origin passes (empty list, or `*`).
    any: bool,
    /// `null` is listed.
    null: bool,
    rules: Vec<OriginRule>,
}

impl Default for OriginPolicy {
    /// The empty list: any origin.
    fn default() -> Self {
        OriginPolicy {
            any: true,
            null: false,
            rules: Vec::new(),
        }
    }
}

impl OriginPolicy {
    /// Parses the entries; the error carries the index and a reason for the
    /// first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<OriginPolicy, (usize, String)> {
        let mut policy = OriginPolicy {
            any: entries.is_empty(),
            null: false,
            rules: Vec::new(),
        };
        for (i, e) in entries.iter().enumerate() {
            match e.as_ref().trim() {
                "" => return Err((i, "empty entry".into())),
                "*" => policy.any = true,
                s if s.eq_ignore_ascii_case("null") => policy.null = true,
                s => policy
                    .rules
                    .push(OriginRule::parse(s).map_err(|why| (i, why))?),
            }
        }
        Ok(policy)
    }

    /// Whether every origin passes.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether a request with this `Origin` header value (or none) may
    /// upgrade.
    pub fn allowed(&self, origin: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        let origin = origin.trim_ascii();
        if origin.eq_ignore_ascii_case(b"null") {
            return self.null;
        }
        match split_origin(origin) {
            Some(parts) => self.rules.iter().any(|r| r.matches(&parts)),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::parse(entries).unwrap()
    }

    fn check(p: &OriginPolicy, yes: &[&str], no: &[&str]) {
        for o in yes {
            assert!(p.allowed(Some(o.as_bytes())), "should allow {o}");
        }
        for o in no {
            assert!(!p.allowed(Some(o.as_bytes())), "should refuse {o}");
        }
    }

    #[test]
    fn empty_list_and_star_allow_everything() {
        let all = [
            policy(&[]),
            policy(&["*"]),
            policy(&["https://a.example", "*"]),
            OriginPolicy::default(),
        ];
        for p in all {
            check(&p, &["https://evil.example", "null", "garbage", ""], &[]);
            assert!(p.allowed(None));
        }
    }

    #[test]
    fn exact_origins() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"]);
        check(
            &p,
            &[
                "https://app.example.com",
                "HTTPS://APP.Example.COM",
                "https://app.example.com:443",
                "http://localhost:3000",
            ],
            &[
                "http://app.example.com",
                "https://app.example.com:8443",
                "https://evil.app.example.com",
                "https://app.example.com.evil.net",
                "https://xapp.example.com",
                "http://localhost",
                "http://localhost:3001",
                "https://localhost:3000",
                "https://app.example.com/",
                "https://app.example.com/path",
                "https://user@app.example.com",
                "app.example.com",
                "null",
                "",
            ],
        );
        // No Origin at all: not a browser, allowed.
        assert!(p.allowed(None));
    }

    #[test]
    fn wildcard_subdomains() {
        let p = policy(&["https://*.example.com"]);
        check(
            &p,
            &[
                "https://a.example.com",
                "https://a.b.example.com",
                "https://A.EXAMPLE.com",
                "https://a.example.com:443",
            ],
            &[
                "https://example.com",
                "https://.example.com",
                "https://a..example.com",
                "https://aexample.com",
                "https://a.example.com.evil.net",
                "https://a.example.org",
                "http://a.example.com",
                "https://a.example.com:8443",
                "https://a.example.com:0",
                "https://a.example.com:99999",
            ],
        );
    }

    #[test]
    fn scheme_less_entries_match_http_and_https() {
        let p = policy(&["*.example.com", "example.com", "localhost:3000"]);
        check(
            &p,
            &[
                "https://a.example.com",
                "http://a.example.com",
                "https://example.com",
                "http://example.com:80",
                "http://localhost:3000",
                "https://localhost:3000",
            ],
            &[
                "ws://a.example.com",
                "chrome-extension://example.com",
                "https://example.com:8443",
                "http://localhost",
                "http://localhost:80",
            ],
        );
        // A scheme-less entry with a default port behaves like that port.
        let p = policy(&["example.com:443"]);
        check(
            &p,
            &["https://example.com", "http://example.com:443"],
            &["http://example.com"],
        );
    }

    #[test]
    fn null_ipv6_and_ip_hosts() {
        let p = policy(&["null", "http://[::1]:8080", "https://192.0.2.7"]);
        check(
            &p,
            &["null", "NULL", "http://[::1]:8080", "https://192.0.2.7"],
            &["http://[::2]:8080", "http://[::1]", "https://192.0.2.8"],
        );
        assert!(!policy(&["https://a.example"]).allowed(Some(b"null")));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/x",
            "https://*example.com",
            "https://a.*.example.com",
            "*.com",
            "https://*.com",
            "https://user@host",
            "https://",
            "://host",
            "1https://host",
            "https://host:0",
            "https://host:65536",
            "https://host:x",
            "https://ho st",
            "https://[::1",
            "https://[zz]",
            "",
            "https://host?x",
        ] {
            let err = OriginPolicy::parse(&["https://ok.example", bad]).unwrap_err();
            assert_eq!(err.0, 1, "{bad}");
            assert!(!err.1.is_empty());
        }
        let err = OriginPolicy::parse(&["https://a.example/"]).unwrap_err();
        assert!(err.1.contains("no path"), "{}", err.1);
    }

    #[test]
    fn garbage_origins_never_panic() {
        let p = policy(&["https://*.example.com", "localhost:3000"]);
        let samples: [&[u8]; 8] = [
            b"\xff\xfe://\x00",
            b"https://[",
            b"https://[]:",
            b"https://a.example.com:",
            b"://",
            b"https://a.example.com:65536",
            b"https://\xc3\xa9.example.com",
            &[b'a'; 10_000],
        ];
        for s in samples {
            assert!(!p.allowed(Some(s)));
        }
    }
}
