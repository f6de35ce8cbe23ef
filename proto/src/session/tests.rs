//! A simulated agent/server pair with a virtual clock.

use std::time::{Duration, Instant};

use super::*;
use crate::error::Refused;
use crate::pb::v1::{Event, PushKind};
use crate::pb::v1::{LicenceStatus, Push, RefusalCode, SyncRequest, SyncResponse};

struct Pair {
    client: ClientSession,
    server: ServerSession,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            client: ClientSession::new(hello(Role::Agent, "test", &[]), Duration::from_secs(30)),
            server: ServerSession::new("d-1", "server"),
            now: Instant::now(),
        }
    }

    /// Moves every queued message both ways until quiet.
    fn drive(&mut self) -> Result<(), SessionError> {
        loop {
            let mut moved = false;
            while let Some(m) = self.client.poll_transmit() {
                moved = true;
                self.server.handle_message(m, 0)?;
            }
            while let Some(m) = self.server.poll_transmit() {
                moved = true;
                self.client.handle_message(m, self.now)?;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// Hello, licence check, established; every event and action drained.
    fn establish(&mut self) {
        self.drive().unwrap();
        while self.server.poll_action().is_some() {}
        self.server.licence_checked(LicenceStatus::default());
        self.drive().unwrap();
        while self.client.poll_event().is_some() {}
        assert!(self.client.is_ready() && self.server.is_ready());
    }
}

#[test]
fn s3_licence_check_comes_before_any_sync() {
    let mut p = Pair::new();
    p.drive().unwrap();
    assert!(matches!(
        p.server.poll_action(),
        Some(ServerAction::CheckLicence { version: 1, .. })
    ));
    assert!(!p.client.is_ready());
    // A client that syncs before its licence check is refused.
    let mut rogue = ServerSession::new("d-2", "server");
    rogue
        .handle_message(Msg::Hello(hello(Role::Agent, "x", &[])), 0)
        .unwrap();
    let err = rogue
        .handle_message(Msg::SyncRequest(SyncRequest::default()), 0)
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::Unexpected {
            got: "SyncRequest",
            ..
        }
    ));
    assert!(matches!(rogue.poll_transmit(), Some(Msg::HelloAck(_))));
    assert!(matches!(rogue.poll_transmit(), Some(Msg::Refusal(_))));

    p.server.licence_checked(LicenceStatus {
        licensed: true,
        ..Default::default()
    });
    p.drive().unwrap();
    assert!(matches!(
        p.client.poll_event(),
        Some(ClientEvent::Established { .. })
    ));
    assert!(matches!(p.client.poll_event(), Some(ClientEvent::Licence(l)) if l.licensed));
    p.client.handle_timeout(p.now).unwrap();
    assert_eq!(p.client.poll_event(), Some(ClientEvent::SyncDue));
}

#[test]
fn s4_sync_repeats_at_interval_and_on_push() {
    let mut p = Pair::new();
    p.drive().unwrap();
    p.server.poll_action();
    p.server.licence_checked(LicenceStatus::default());
    p.drive().unwrap();
    while p.client.poll_event().is_some() {}
    p.client.handle_timeout(p.now).unwrap();
    assert_eq!(p.client.poll_event(), Some(ClientEvent::SyncDue));
    let req = SyncRequest {
        events: vec![Event {
            id: "e1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let seq = p.client.send_sync(req, p.now);
    p.drive().unwrap();
    let Some(ServerAction::Sync(got)) = p.server.poll_action() else {
        panic!()
    };
    assert_eq!(got.seq, seq);
    p.server.sync_done(SyncResponse {
        seq,
        acked_event_ids: vec!["e1".into()],
        next_sync_secs: 60,
        ..Default::default()
    });
    p.drive().unwrap();
    assert!(
        matches!(p.client.poll_event(), Some(ClientEvent::Synced(r)) if r.acked_event_ids == ["e1"])
    );
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(60))
    );
    // A push asking for a sync makes one due now, and is acknowledged.
    assert!(p.server.push(Push {
        id: "p1".into(),
        kind: PushKind::SyncNow as i32,
        ..Default::default()
    }));
    p.drive().unwrap();
    assert_eq!(
        p.server.poll_action(),
        Some(ServerAction::PushAcked("p1".into()))
    );
    assert!(matches!(p.client.poll_event(), Some(ClientEvent::Push(_))));
    assert_eq!(p.client.poll_timeout(), Some(p.now));
}

#[test]
fn s2_version_mismatch_is_refused_with_both_versions() {
    let mut server = ServerSession::new("d-1", "server");
    let mut h = hello(Role::Agent, "future", &[]);
    h.min_version = 7;
    h.max_version = 9;
    let err = server.handle_message(Msg::Hello(h), 0).unwrap_err();
    assert!(matches!(err, SessionError::Version(_)));
    match server.poll_transmit() {
        Some(Msg::Refusal(r)) => {
            assert_eq!(r.code, RefusalCode::UnsupportedVersion as i32);
            assert!(
                r.message.contains("7..=9") && r.message.contains("1..=1"),
                "{}",
                r.message
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sync_timeout_fails_the_session() {
    let mut p = Pair::new();
    p.drive().unwrap();
    p.server.poll_action();
    p.server.licence_checked(LicenceStatus::default());
    p.drive().unwrap();
    p.client.send_sync(SyncRequest::default(), p.now);
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(30))
    );
    assert!(
        p.client
            .handle_timeout(p.now + Duration::from_secs(29))
            .is_ok()
    );
    assert!(matches!(
        p.client.handle_timeout(p.now + Duration::from_secs(30)),
        Err(SessionError::Timeout(_))
    ));
}

#[test]
fn s8_revoked_device_confirms_it_dropped_its_grants() {
    // A live session is told the device was revoked; whatever the agent sent meanwhile is
    // ignored, its confirmation ends the session with an action for the server.
    let mut p = Pair::new();
    p.establish();
    let r = Refused::new(
        RefusalCode::Revoked,
        "device d-1 was revoked by an administrator",
    );
    p.server.refuse_device(r.clone());
    assert!(p.server.awaits_drop());
    let refusal = p.server.poll_transmit().expect("refusal queued");
    match p.client.handle_message(refusal, p.now) {
        Err(SessionError::Refused(got)) => assert_eq!(got, r),
        other => panic!("{other:?}"),
    }
    p.server
        .handle_message(Msg::SyncRequest(SyncRequest::default()), 0)
        .expect("a sync in flight is ignored");
    p.client.licence_dropped(RefusalCode::Revoked);
    let confirm = p.client.poll_transmit().expect("confirmation queued");
    assert!(matches!(confirm, Msg::LicenceDropped(_)));
    p.server.handle_message(confirm, 0).unwrap();
    assert_eq!(p.server.poll_action(), Some(ServerAction::LicenceDropped));
    assert!(p.server.is_closed());
}

#[test]
fn l9_server_tells_a_live_session_its_licence_changed() {
    let mut p = Pair::new();
    p.establish();
    p.server.licence_changed(LicenceStatus {
        licensed: true,
        checked_at: 7,
        ..Default::default()
    });
    let m = p.server.poll_transmit().expect("status queued");
    p.client.handle_message(m, p.now).unwrap();
    let mut got = false;
    while let Some(ev) = p.client.poll_event() {
        got |= matches!(ev, ClientEvent::Licence(s) if s.licensed && s.checked_at == 7);
    }
    assert!(got);
    // Before the licence check nothing is sent.
    let mut fresh = ServerSession::new("d-2", "server");
    fresh.licence_changed(LicenceStatus::default());
    assert!(fresh.poll_transmit().is_none());
}

#[test]
fn s9_certificate_renewal_over_an_established_session() {
    let mut p = Pair::new();
    assert!(
        !p.client.renew_certificate(vec![1]),
        "no renewal before the session is established"
    );
    p.establish();
    assert!(p.client.renew_certificate(vec![1, 2, 3]));
    p.drive().unwrap();
    assert_eq!(
        p.server.poll_action(),
        Some(ServerAction::RenewCertificate(vec![1, 2, 3]))
    );
    p.server.cert_renewed(crate::pb::v1::CertRenewed {
        certificate_der: vec![9],
        ca_der: vec![vec![8]],
    });
    p.drive().unwrap();
    assert!(matches!(
        p.client.poll_event(),
        Some(ClientEvent::CertRenewed(r)) if r.certificate_der == vec![9]
    ));
    // A renewal before the hello is a protocol error on the server.
    let mut fresh = ServerSession::new("d-2", "server");
    assert!(
        fresh
            .handle_message(
                Msg::CertRenewal(crate::pb::v1::CertRenewal { csr_der: vec![] }),
                0
            )
            .is_err()
    );
}

fn first_sync_pair() -> Pair {
    let now = Instant::now();
    let first = SyncRequest {
        events: vec![Event {
            id: "e1".into(),
            kind: "k".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Pair {
        client: ClientSession::with_first_sync(
            hello(Role::Agent, "test", &[]),
            first,
            Duration::from_secs(30),
            now,
        ),
        server: ServerSession::new("d-1", "server"),
        now,
    }
}

#[test]
fn s3_sync_in_the_hello_is_answered_only_after_the_licence_check() {
    let mut p = first_sync_pair();
    p.drive().unwrap();
    // Only the check is asked for; the sync waits for its answer (S3).
    assert!(matches!(
        p.server.poll_action(),
        Some(ServerAction::CheckLicence { .. })
    ));
    assert_eq!(p.server.poll_action(), None);
    p.server.licence_checked(LicenceStatus {
        licensed: true,
        ..Default::default()
    });
    let Some(ServerAction::Sync(req)) = p.server.poll_action() else {
        panic!("the sync from the hello is handed over after the check")
    };
    assert_eq!((req.seq, req.events.len()), (1, 1));
    p.server.sync_done(SyncResponse {
        seq: req.seq,
        acked_event_ids: vec!["e1".into()],
        next_sync_secs: 60,
        ..Default::default()
    });
    p.drive().unwrap();
    // One round trip: established, licensed and synced; no second sync is due yet.
    let mut seen = vec![];
    while let Some(e) = p.client.poll_event() {
        seen.push(match e {
            ClientEvent::Established { .. } => "established",
            ClientEvent::Licence(_) => "licence",
            ClientEvent::Synced(r) => {
                assert_eq!(r.acked_event_ids, vec!["e1".to_string()]);
                "synced"
            }
            ClientEvent::SyncDue => "sync-due",
            _ => "other",
        });
    }
    assert_eq!(seen, ["established", "licence", "synced"]);
    assert!(p.client.is_ready() && p.client.poll_timeout() > Some(p.now));
}

#[test]
fn s5_an_event_queued_while_the_hello_is_answered_is_synced_right_after_it() {
    let mut p = first_sync_pair();
    p.drive().unwrap();
    // The hello (with its sync) is out; a new event is queued locally and a sync asked for
    // before the licence check is answered.
    p.client.request_sync(p.now);
    assert!(!p.client.is_ready());
    p.server.poll_action();
    p.server.licence_checked(LicenceStatus::default());
    let Some(ServerAction::Sync(req)) = p.server.poll_action() else {
        panic!("the hello's sync")
    };
    p.server.sync_done(SyncResponse {
        seq: req.seq,
        next_sync_secs: 300,
        ..Default::default()
    });
    p.drive().unwrap();
    while p.client.poll_event().is_some() {}
    // Not five minutes later: now.
    assert_eq!(p.client.poll_timeout(), Some(p.now));
    p.client.handle_timeout(p.now).unwrap();
    assert_eq!(p.client.poll_event(), Some(ClientEvent::SyncDue));
}

#[test]
fn s2_a_server_without_sync_in_hello_gets_the_sync_after_the_check() {
    let mut p = first_sync_pair();
    // An older server: it ignores the field and announces no capability.
    let Some(Msg::Hello(h)) = p.client.poll_transmit() else {
        panic!("hello first")
    };
    assert!(h.first_sync.is_some());
    p.client
        .handle_message(
            Msg::HelloAck(crate::pb::v1::HelloAck {
                version: 1,
                device_id: "d-1".into(),
                ..Default::default()
            }),
            p.now,
        )
        .unwrap();
    p.client
        .handle_message(Msg::LicenceStatus(LicenceStatus::default()), p.now)
        .unwrap();
    p.client.handle_timeout(p.now).unwrap();
    let mut due = false;
    while let Some(e) = p.client.poll_event() {
        due |= matches!(e, ClientEvent::SyncDue);
    }
    assert!(due, "the agent syncs after the check as before");
    assert_eq!(p.client.send_sync(SyncRequest::default(), p.now), 2);
}
