use super::*;

#[test]
fn error_is_small_and_thread_safe() {
    fn assert_traits<T: StdError + Send + Sync + Clone + 'static>() {}
    assert_traits::<Error>();
    assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
}

#[test]
fn display_names_service_and_phase() {
    let e = Error::msg("boom").in_service("db", Phase::Close);
    assert_eq!(e.to_string(), "db: close failed: boom");
    assert_eq!(e.service(), Some("db"));
    assert_eq!(e.phase(), Some(Phase::Close));
    assert_eq!(Error::msg("plain").to_string(), "plain");
    let t = Error::timed_out("api", Phase::Start, Duration::from_millis(1500));
    assert_eq!(t.to_string(), "api: start timed out after 1.5s");
    assert!(t.is_timeout());
    assert_eq!(
        Error::cancelled("w", Phase::Start).to_string(),
        "w: start cancelled"
    );
}

#[test]
fn in_service_keeps_existing_names() {
    let e = Error::msg("x")
        .in_service("inner", Phase::Close)
        .in_service("outer", Phase::Start);
    assert_eq!(e.service(), Some("inner"));
    assert_eq!(e.phase(), Some(Phase::Close));
}

#[test]
fn other_does_not_rewrap_own_errors_and_shows_the_cause_once() {
    let own = Error::msg("m").in_service("s", Phase::Start);
    let back = Error::other(BoxError::from(own.clone()));
    assert_eq!(back.to_string(), own.to_string());

    let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "port taken");
    let e = Error::from(io).in_service("api", Phase::Start);
    assert_eq!(e.to_string(), "api: start failed: port taken");
    // The cause's message is in Display, so source() does not return the cause again.
    assert!(e.source().is_none());
    assert!(e.find::<std::io::Error>().is_some());
}

#[test]
fn a_timeout_with_its_last_error_is_a_timeout() {
    let last = Error::msg("warming up").in_service("api", Phase::Ready);
    let t = Error::timed_out_after("api", Phase::Start, Duration::from_secs(2), last);
    assert_eq!(t.kind(), ErrorKind::TimedOut);
    assert_eq!(
        t.to_string(),
        "api: start timed out after 2s, last error: ready failed: warming up"
    );
    assert!(
        t.has_kind(ErrorKind::Failed),
        "the attached error is searched too"
    );
}

#[test]
fn join_flattens_and_keeps_order() {
    assert!(Error::join([]).is_none());
    let a = Error::msg("a");
    assert_eq!(Error::join([a.clone()]).unwrap().to_string(), "a");
    let ab = Error::join([Error::msg("a"), Error::msg("b")]).unwrap();
    let abc = Error::join([ab, Error::msg("c")]).unwrap();
    let parts: Vec<String> = abc.errors().map(ToString::to_string).collect();
    assert_eq!(parts, ["a", "b", "c"]);
    assert_eq!(format!("{abc:#}"), "a\nb\nc");
    let named = abc.in_service("svc", Phase::Run);
    assert!(named.errors().all(|e| e.service() == Some("svc")));
}

#[test]
fn registration_errors_name_the_component() {
    let dup = Error::registration(ErrorKind::DuplicateName, "db");
    assert_eq!(dup.to_string(), "db: already registered");
    assert_eq!(dup.service(), Some("db"));
    assert_eq!(dup.phase(), None);
    let missing = Error::registration(ErrorKind::NotRegistered, "cache");
    assert_eq!(missing.to_string(), "cache: not registered");
}

#[test]
fn names_are_checked() {
    assert!(check_name("db.pool").is_ok());
    let empty = check_name("").unwrap_err();
    assert_eq!(empty.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        empty.to_string(),
        "invalid name \"\": a name must not be empty"
    );
    assert!(check_name("a\nb").is_err());
}

#[test]
fn panic_payloads_become_messages() {
    let p = std::panic::catch_unwind(|| panic!("bad {}", 42)).unwrap_err();
    let e = Error::panicked("w", Phase::Close, &*p);
    assert_eq!(e.to_string(), "w: panicked in close: bad 42");
    assert!(e.is_panic());
}
