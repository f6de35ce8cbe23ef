//! Fuzz target bodies: every decoder that takes outside bytes, each a function of one input
//! that must never panic, and round-trips where an encoder exists (decode → encode → decode is
//! stable). The `cargo fuzz` targets in `fuzz/` call these; `tests/tests/fuzz_corpora.rs`
//! replays every committed corpus file through them on stable Rust, so CI re-checks every
//! input a fuzzer ever kept.

use std::sync::OnceLock;

use bytes::BytesMut;
use outpost_proto::control::{Acceptor, Channel, Opener};
use outpost_proto::frame::{DEFAULT_MAX_FRAME, FrameCodec};
use outpost_proto::licence::{Authority as KeyAuthority, GrantSigner, KeyBody};
use outpost_proto::pb::v1::{Envelope, GrantBody, LicenceStatus, SignedGrant, envelope::Msg};
use outpost_proto::pki::{self, Ca, CertRole};
use outpost_proto::session::{ClientSession, ServerSession};
use outpost_proto::token::Token;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

/// A target body: one input, never a panic.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_codec", frame_codec),
    ("envelope", envelope),
    ("key_file", key_file),
    ("key_body", key_body),
    ("key_archive", key_archive),
    ("token", token),
    ("grant", grant),
    ("certificate", certificate),
    ("config", config),
];

/// Frames over a byte stream arriving in pieces (the piece size is the first byte): decoding
/// never panics, never allocates past the maximum, and every frame decoded re-encodes to one
/// that decodes equal.
pub fn frame_codec(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut codec = FrameCodec::new(64 << 10);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => round_trip_frame(msg),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= (64 << 10) + 2 * (8 << 10) + rest.len());
    }
    while let Ok(Some(msg)) = codec.decode_eof(&mut buf) {
        round_trip_frame(msg);
    }
}

fn round_trip_frame(msg: Msg) {
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
    let mut out = BytesMut::new();
    if codec.encode(msg.clone(), &mut out).is_err() {
        return;
    }
    let back = codec.decode(&mut out).expect("own frame decodes");
    assert_eq!(back, Some(msg));
}

/// One envelope: decodes or is refused; a decoded one re-encodes to an equal message; fed to
/// every protocol state machine, none panics.
pub fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    let again = Envelope::decode(env.encode_to_vec().as_slice()).expect("own encoding decodes");
    assert_eq!(again, env);
    let Some(msg) = env.msg else { return };
    let now = std::time::Instant::now();
    let mut server = ServerSession::new("a-1", "fuzz");
    let _ = server.handle_message(msg.clone(), 0);
    while server.poll_transmit().is_some() || server.poll_action().is_some() {}
    let mut client = ClientSession::new(
        outpost_proto::session::hello(outpost_proto::pb::v1::Role::Agent, "fuzz", &[]),
        std::time::Duration::from_secs(5),
    );
    let _ = client.handle_message(msg.clone(), now);
    for channel in [Channel::Uplink, Channel::Admin, Channel::Peer] {
        let mut a = Acceptor::new(
            channel,
            "g-1",
            "fuzz",
            now,
            std::time::Duration::from_secs(5),
        );
        let _ = a.handle_message(msg.clone(), 0);
        let mut o = Opener::new(channel, "fuzz");
        let _ = o.handle_message(msg.clone());
    }
}

fn authority() -> &'static KeyAuthority {
    static A: OnceLock<KeyAuthority> = OnceLock::new();
    A.get_or_init(|| KeyAuthority::generate().0)
}

/// A key file as uploaded: verified against the authority or refused, never a panic.
pub fn key_file(data: &[u8]) {
    let a = authority();
    if let Ok(k) = outpost_proto::licence::verify_key_file(data, a.public_key()) {
        assert_eq!(k.file, data, "a verified key is its file byte for byte");
    }
}

/// A key body that passed the signature (the authority signed whatever the input says):
/// parsed and checked field by field, never a panic; a valid one issues to a file that
/// verifies to the same body.
pub fn key_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let a = authority();
    let file = a.sign_raw_body(text);
    if let Ok(k) = outpost_proto::licence::verify_key_file(&file, a.public_key()) {
        let reissued: KeyBody = k.body.clone();
        let again = a.issue(&reissued).expect("a parsed body issues");
        let back = outpost_proto::licence::verify_key_file(&again.file, a.public_key())
            .expect("an issued key verifies");
        assert_eq!(back.body, k.body);
    }
}

/// A key upload that may be a .zip archive (all or nothing): never a panic.
pub fn key_archive(data: &[u8]) {
    let a = authority();
    let _ = outpost_server::licence::import::verify_upload("upload.zip", data, a.public_key());
    let _ = outpost_server::licence::import::verify_upload("upload.key", data, a.public_key());
}

/// An enrollment token as typed: parsed or refused; a parsed one prints back to itself.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Token::parse(text) {
        let back = Token::parse(&t.to_text()).expect("own text parses");
        assert!(back == t);
    }
}

fn signer() -> &'static GrantSigner {
    static S: OnceLock<GrantSigner> = OnceLock::new();
    S.get_or_init(|| GrantSigner::generate().0)
}

/// A stored or received licence status: its grants verified or refused, the licence state
/// derived without a panic at any time.
pub fn grant(data: &[u8]) {
    let key = signer().public_key();
    if let Ok(g) = SignedGrant::decode(data) {
        let _ = outpost_proto::licence::verify_grant(&g, &key, "a-1");
    }
    if let Ok(body) = GrantBody::decode(data) {
        let signed = signer().sign(&body);
        let back = outpost_proto::licence::verify_grant(&signed, &key, &body.device_id)
            .expect("own signature verifies");
        assert_eq!(back, body);
        for now in [
            0,
            body.issued_at,
            body.expires_at,
            body.valid_from,
            i64::MAX,
        ] {
            let _ = outpost_proto::licence::effective_licence(Some(&back), Some(&back), now, "");
        }
    }
    if let Ok(s) = LicenceStatus::decode(data) {
        let _ = outpost_proto::licence::recheck::Sent::of(&s);
    }
}

fn ca() -> &'static Ca {
    static C: OnceLock<Ca> = OnceLock::new();
    C.get_or_init(|| Ca::generate("fuzz", 1_800_000_000).expect("CA"))
}

/// A CSR at enrollment, and certificates in PEM: issued or refused, names read back, never a
/// panic.
pub fn certificate(data: &[u8]) {
    if let Ok(der) = ca().issue_for_csr(data, CertRole::Agent, "a-1", 1_800_000_000, 86_400) {
        assert_eq!(pki::common_name(&der).expect("own certificate"), "a-1");
    }
    let _ = pki::common_name(data);
    let _ = pki::has_dns_name(data, pki::SERVER_NAME);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pki::certs_from_pem(text, "fuzz");
        let _ = pki::Identity::from_pem(
            &pki::IdentityPem {
                chain_pem: text.to_owned(),
                key_pem: text.to_owned(),
            },
            "fuzz",
        );
    }
}

/// Configuration files of all three binaries: refused with a message or accepted; an accepted
/// one written back with its comments reads back equal.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = toml::from_str::<outpost_server::config::ServerConfig>(text)
        && c.validate().is_ok()
    {
        let back: outpost_server::config::ServerConfig =
            toml::from_str(&c.to_commented_toml()).expect("own config parses");
        assert_eq!(back, c);
    }
    if let Ok(c) = toml::from_str::<outpost_gateway::GatewayConfig>(text)
        && c.validate().is_ok()
    {
        let back: outpost_gateway::GatewayConfig =
            toml::from_str(&c.to_commented_toml()).expect("own config parses");
        assert_eq!(back, c);
    }
    if let Ok(c) = toml::from_str::<outpost_agent::AgentConfig>(text)
        && c.validate().is_ok()
    {
        let back: outpost_agent::AgentConfig =
            toml::from_str(&c.to_commented_toml()).expect("own config parses");
        assert_eq!(back, c);
    }
}

/// Well-formed starting inputs for a target, so a fuzzer begins inside the formats rather than
/// at random bytes (written to `fuzz/corpus/<target>/` by the `write_fuzz_seeds` test).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use outpost_proto::pb::v1::{Hello, Push, Refusal, Role, SyncRequest, SyncResponse};
    let msgs = || {
        vec![
            Msg::Hello(outpost_proto::session::hello(
                Role::Agent,
                "seed",
                &["relay"],
            )),
            Msg::Hello(Hello {
                role: Role::Gateway as i32,
                ..outpost_proto::session::hello(Role::Gateway, "seed", &[])
            }),
            Msg::SyncRequest(SyncRequest::default()),
            Msg::SyncResponse(SyncResponse::default()),
            Msg::Push(Push::default()),
            Msg::Refusal(Refusal::default()),
        ]
    };
    let body = KeyBody {
        key_id: "K-1".into(),
        licensee: "ACME GmbH".into(),
        product: "Outpost Endpoint".into(),
        components: vec!["antivirus".into()],
        seats: 5,
        valid_from: 1_800_000_000,
        expires_at: 1_900_000_000,
        kind: outpost_proto::pb::v1::KeyKind::Commercial,
        renews: None,
    };
    match target {
        "frame_codec" => {
            let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
            let mut out = BytesMut::new();
            for m in msgs() {
                codec.encode(m, &mut out).expect("encode");
            }
            vec![
                [&[7u8][..], &out[..]].concat(),
                [&[255u8][..], &out[..]].concat(),
            ]
        }
        "envelope" => msgs()
            .into_iter()
            .map(|m| Envelope { msg: Some(m) }.encode_to_vec())
            .collect(),
        "key_file" | "key_archive" => {
            let file = authority().issue(&body).expect("issue").file;
            let mut zip = Vec::new();
            {
                let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut zip));
                w.start_file("K-1.key", zip::write::SimpleFileOptions::default())
                    .expect("zip");
                std::io::Write::write_all(&mut w, &file).expect("zip");
                w.finish().expect("zip");
            }
            vec![file, zip]
        }
        "key_body" => {
            let file = authority().issue(&body).expect("issue").file;
            let text = String::from_utf8(file).expect("utf-8");
            let end = text.find("-----BEGIN").unwrap_or(text.len());
            vec![text.as_bytes()[..end].to_vec()]
        }
        "token" => vec![Token::generate([7; 32]).to_text().into_bytes()],
        "grant" => {
            let g = GrantBody {
                device_id: "a-1".into(),
                key_id: "K-1".into(),
                issued_at: 1_800_000_000,
                expires_at: 1_800_600_000,
                ..Default::default()
            };
            vec![g.encode_to_vec(), signer().sign(&g).encode_to_vec()]
        }
        "certificate" => {
            let csr = pki::generate_csr("seed-host").expect("csr");
            let id = ca()
                .issue(CertRole::Agent, "a-1", &[], 1_800_000_000, 86_400)
                .expect("issue");
            vec![csr.csr_der, id.chain_pem.into_bytes()]
        }
        "config" => vec![
            outpost_server::config::ServerConfig::default()
                .to_commented_toml()
                .into_bytes(),
            outpost_gateway::GatewayConfig::default()
                .to_commented_toml()
                .into_bytes(),
            outpost_agent::AgentConfig::default()
                .to_commented_toml()
                .into_bytes(),
        ],
        _ => Vec::new(),
    }
}
