//! The document service end to end over gRPC, with real Postgres, NATS and object stores (a
//! local directory, and moto's S3 server): streamed upload and download, content ids, versions,
//! the lifecycle, search, deduplication per tenant, retention, the sweeper, and bad input.

use std::path::PathBuf;
use std::time::Duration;

use cim_core::TenantId;
use cim_document::app::{DocumentOptions, prepare_with};
use cim_document::content::cid_of;
use cim_proto::document as pb;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use tonic::Code;
use tonic::transport::Channel;

type Client = DocumentServiceClient<Channel>;

struct Service {
    running: Running,
    objects: PathBuf,
}

impl Service {
    /// A document service over its own schema, prefix and object directory (or `store_url`).
    async fn start(extra: &[(&str, String)]) -> Service {
        let objects = std::env::temp_dir().join(unique("objects"));
        let mut vars = vec![
            ("CIM_OBJECT_STORE_URL", objects.display().to_string()),
            ("CIM_DOCUMENT_GC_GRACE_SECS", "1".to_owned()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let (schema, prefix) = (unique("d"), unique("p"));
        let config = config(ServiceKind::Document, &prefix, &vars);
        let shutdown = Shutdown::new();
        let options = DocumentOptions { schema: schema.clone(), sweep_every: Duration::from_millis(300) };
        let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
        Service { running: Running::spawn(prepared, schema, prefix, shutdown), objects }
    }

    async fn client(&self) -> Client {
        DocumentServiceClient::new(self.running.channel().await)
    }

    /// Files under the local object directory whose path contains `part`.
    fn files(&self, part: &str) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() { walk(&path, out) } else { out.push(path) }
            }
        }
        let mut out = Vec::new();
        walk(&self.objects, &mut out);
        out.retain(|p| p.display().to_string().contains(part));
        out
    }

    async fn stop(self) {
        self.running.stop().await;
        let _ = std::fs::remove_dir_all(&self.objects);
    }
}

async fn create(c: &mut Client, tenant: TenantId, title: &str) -> String {
    let r = pb::CreateDocumentRequest { title: title.into(), ..Default::default() };
    c.create_document(req(tenant, r)).await.unwrap().into_inner().document_id
}

fn start(id: &str, content_type: &str) -> pb::UploadStart {
    pb::UploadStart { document_id: id.into(), content_type: content_type.into(), ..Default::default() }
}

fn parts(start: pb::UploadStart, chunks: Vec<Vec<u8>>) -> Vec<pb::UploadContentRequest> {
    use pb::upload_content_request::Part;
    let mut all = vec![pb::UploadContentRequest { part: Some(Part::Start(start)) }];
    all.extend(chunks.into_iter().map(|c| pb::UploadContentRequest { part: Some(Part::Chunk(c)) }));
    all
}

async fn upload(
    c: &mut Client,
    tenant: TenantId,
    messages: Vec<pb::UploadContentRequest>,
) -> Result<pb::CommandResponse, tonic::Status> {
    c.upload_content(req(tenant, futures::stream::iter(messages))).await.map(|r| r.into_inner())
}

/// Downloads, checking the first message's info; the bytes and the info.
async fn download(
    c: &mut Client,
    tenant: TenantId,
    r: pb::DownloadContentRequest,
) -> Result<(Vec<u8>, pb::ContentInfo), tonic::Status> {
    let mut stream = c.download_content(req(tenant, r)).await?.into_inner();
    let mut bytes = Vec::new();
    let mut info = None;
    while let Some(message) = stream.message().await? {
        if message.info.is_some() {
            assert!(info.is_none(), "info comes once");
            info = message.info;
        }
        bytes.extend_from_slice(&message.data);
    }
    Ok((bytes, info.expect("the first message carries info")))
}

fn whole(id: &str) -> pb::DownloadContentRequest {
    pb::DownloadContentRequest { document_id: id.into(), ..Default::default() }
}

fn code_of(status: &tonic::Status) -> cim_core::ErrorCode {
    cim_proto::status::read_status(status).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_version_review_and_download_on_a_local_directory() {
    upload_version_review_and_download(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_version_review_and_download_on_s3() {
    let s3 = cim_testkit::s3::MotoS3::start();
    s3.create_bucket("cim-lifecycle");
    upload_version_review_and_download(&s3_vars(&s3, "s3://cim-lifecycle/docs")).await;
}

/// The variables of a document service on moto's S3 at `url`.
fn s3_vars(s3: &cim_testkit::s3::MotoS3, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CIM_OBJECT_STORE_URL", url.to_owned()),
        ("CIM_S3_ENDPOINT", s3.endpoint.clone()),
        ("CIM_S3_ACCESS_KEY_ID", "cim".into()),
        ("CIM_S3_SECRET_ACCESS_KEY", "document-test-key".into()),
    ]
}

/// The whole lifecycle over gRPC, on the object store `store` names.
async fn upload_version_review_and_download(store: &[(&str, String)]) {
    let svc = Service::start(store).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "Quarterly report").await;

    // Streamed in three chunks, with the CID the client computed.
    let body = b"revenue grew in the northern region; costs fell\n".repeat(100);
    let cid = cid_of(&blake3::hash(&body));
    let chunks: Vec<Vec<u8>> = body.chunks(1700).map(<[u8]>::to_vec).collect();
    let mut first = start(&id, "text/plain; charset=utf-8");
    first.expected_cid = cid.clone();
    first.filename = "report.txt".into();
    let done = upload(&mut c, tenant, parts(first, chunks)).await.unwrap();
    assert_eq!((done.content_version, done.content_cid.as_str(), done.version), (1, cid.as_str(), 2));

    let (bytes, info) = download(&mut c, tenant, whole(&id)).await.unwrap();
    assert_eq!(bytes, body);
    assert_eq!((info.cid.as_str(), info.size, info.filename.as_str()), (cid.as_str(), body.len() as u64, "report.txt"));
    let range = pb::DownloadContentRequest { document_id: id.clone(), offset: 8, length: 4, ..Default::default() };
    assert_eq!(download(&mut c, tenant, range).await.unwrap().0, b"grew");

    // Version 2, then tag version 1 and read it by tag.
    let v2 = upload(&mut c, tenant, parts(start(&id, "text/plain"), vec![b"second draft".to_vec()])).await.unwrap();
    assert_eq!(v2.content_version, 2);
    let tag = pb::TagVersionRequest { document_id: id.clone(), version: 1, tag: "q3-final".into(), options: None };
    c.tag_version(req(tenant, tag)).await.unwrap();
    let by_tag = pb::DownloadContentRequest { document_id: id.clone(), tag: "q3-final".into(), ..Default::default() };
    assert_eq!(download(&mut c, tenant, by_tag).await.unwrap().0, body);

    // Review: content is locked outside draft; an illegal transition names both states.
    let change =
        |state: &str| pb::ChangeStateRequest { document_id: id.clone(), state: state.into(), ..Default::default() };
    c.change_state(req(tenant, change("in_review"))).await.unwrap();
    let locked = upload(&mut c, tenant, parts(start(&id, "text/plain"), vec![b"sneaky".to_vec()])).await.unwrap_err();
    assert_eq!(locked.code(), Code::FailedPrecondition, "{locked:?}");
    assert!(locked.message().contains("only in draft"), "{}", locked.message());
    c.change_state(req(tenant, change("approved"))).await.unwrap();
    let illegal = c.change_state(req(tenant, change("in_review"))).await.unwrap_err();
    assert_eq!(illegal.code(), Code::FailedPrecondition);
    assert_eq!(illegal.message(), "the document is approved; it cannot become in_review");

    // Restore version 1 as version 3 after going back to draft.
    c.change_state(req(tenant, change("draft"))).await.unwrap();
    let restore = pb::RestoreVersionRequest { document_id: id.clone(), version: 1, options: None };
    let v3 = c.restore_version(req(tenant, restore)).await.unwrap().into_inner();
    assert_eq!((v3.content_version, v3.content_cid.as_str()), (3, cid.as_str()));
    let versions =
        c.list_versions(req(tenant, pb::ListVersionsRequest { document_id: id.clone() })).await.unwrap().into_inner();
    assert_eq!(versions.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(versions.versions[0].tags, ["q3-final"]);

    // The projection and the history agree.
    let doc =
        c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id.clone() })).await.unwrap().into_inner();
    assert_eq!((doc.state.as_str(), doc.current.as_ref().unwrap().version), ("draft", 3));
    let at = pb::GetDocumentAtVersionRequest { document_id: id.clone(), version: 2 };
    let early = c.get_document_at_version(req(tenant, at)).await.unwrap().into_inner();
    assert_eq!((early.version, early.current.unwrap().cid), (2, cid.clone()));

    // Search reads the content's text; another tenant finds nothing and cannot read it.
    let search = |q: &str| pb::SearchDocumentsRequest { query: q.into(), ..Default::default() };
    let found = c.search_documents(req(tenant, search("northern region"))).await.unwrap().into_inner();
    assert_eq!(found.documents.iter().map(|d| d.document_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert!(c.search_documents(req(tenant, search("southern"))).await.unwrap().into_inner().documents.is_empty());
    let other = TenantId::new();
    assert!(c.search_documents(req(other, search("northern"))).await.unwrap().into_inner().documents.is_empty());
    assert_eq!(download(&mut c, other, whole(&id)).await.unwrap_err().code(), Code::NotFound);

    // Idempotent create: a retry with the same key answers the first result.
    let keyed = || pb::CreateDocumentRequest {
        title: "once".into(),
        options: Some(cim_proto::common::CommandOptions { expected_version: None, idempotency_key: "k-1".into() }),
        ..Default::default()
    };
    let a = c.create_document(req(tenant, keyed())).await.unwrap().into_inner();
    let b = c.create_document(req(tenant, keyed())).await.unwrap().into_inner();
    assert_eq!((a.document_id.as_str(), b.replayed), (b.document_id.as_str(), true));

    // Every event reached the domain's stream under this test's prefix.
    let nats = async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = format!("{}_DOCUMENT", svc.running.prefix.to_ascii_uppercase().replace(['.', '-'], "_"));
    let mut stored = 0;
    for _ in 0..100 {
        stored = js.get_stream(&stream).await.unwrap().info().await.unwrap().state.messages;
        if stored >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // create, two uploads, tag, three review steps, restore; the keyed create once.
    assert_eq!(stored, 9, "events on {stream}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_store_nothing() {
    let svc = Service::start(&[("CIM_DOCUMENT_MAX_CONTENT_BYTES", "1024".into())]).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "limits").await;

    let empty = upload(&mut c, tenant, parts(start(&id, "text/plain"), vec![])).await.unwrap_err();
    assert_eq!((empty.code(), empty.message()), (Code::InvalidArgument, "content is empty"));
    let big = upload(&mut c, tenant, parts(start(&id, ""), vec![vec![7; 1000], vec![7; 1000]])).await.unwrap_err();
    assert_eq!(big.code(), Code::OutOfRange, "{big:?}");
    assert_eq!(code_of(&big), cim_core::ErrorCode::PayloadTooLarge);
    let mut wrong = start(&id, "");
    wrong.expected_cid = cid_of(&blake3::hash(b"something else"));
    let mismatch = upload(&mut c, tenant, parts(wrong, vec![b"these bytes".to_vec()])).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert!(mismatch.message().contains("nothing was stored"), "{}", mismatch.message());
    let mut garbled = start(&id, "");
    garbled.expected_cid = "bafy-nope".into();
    assert_eq!(
        upload(&mut c, tenant, parts(garbled, vec![b"x".to_vec()])).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let no_start =
        vec![pb::UploadContentRequest { part: Some(pb::upload_content_request::Part::Chunk(b"x".to_vec())) }];
    let status = upload(&mut c, tenant, no_start).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "start: the first message must be `start`"));
    let typo = upload(&mut c, tenant, parts(start("not-a-uuid", ""), vec![b"x".to_vec()])).await.unwrap_err();
    assert_eq!(typo.code(), Code::InvalidArgument);
    let bad_type = upload(&mut c, tenant, parts(start(&id, "plain"), vec![b"x".to_vec()])).await.unwrap_err();
    assert_eq!(bad_type.code(), Code::InvalidArgument);
    let foreign = upload(&mut c, TenantId::new(), parts(start(&id, ""), vec![b"x".to_vec()])).await.unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let missing = pb::GetDocumentRequest { document_id: uuid::Uuid::now_v7().to_string() };
    assert_eq!(c.get_document(req(tenant, missing)).await.unwrap_err().code(), Code::NotFound);
    let bad_state = pb::ChangeStateRequest { document_id: id.clone(), state: "published".into(), ..Default::default() };
    assert_eq!(c.change_state(req(tenant, bad_state)).await.unwrap_err().code(), Code::InvalidArgument);

    // Nothing became a version, and the sweeper empties staging.
    let doc =
        c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id.clone() })).await.unwrap().into_inner();
    assert!(doc.current.is_none());
    assert!(svc.files("blobs").is_empty(), "{:?}", svc.files("blobs"));
    wait_until(|| svc.files("staging").is_empty()).await;
    svc.stop().await;
}

async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_bytes_stored_once_per_tenant_and_collected_on_a_local_directory() {
    same_bytes_stored_once_per_tenant_and_collected_after_hard_delete(&[], |svc, prefix| svc.files(prefix).len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_bytes_stored_once_per_tenant_and_collected_on_s3() {
    let s3 = cim_testkit::s3::MotoS3::start();
    s3.create_bucket("cim-dedup");
    let count = |_: &Service, prefix: &str| s3.count_objects_under("cim-dedup", prefix);
    same_bytes_stored_once_per_tenant_and_collected_after_hard_delete(&s3_vars(&s3, "s3://cim-dedup"), count).await;
}

/// Deduplication per tenant, retention and holds, and collection after hard deletes, with
/// `count(service, prefix)` counting the store's objects under a key prefix (`blobs/<tenant>/`).
async fn same_bytes_stored_once_per_tenant_and_collected_after_hard_delete(
    store: &[(&str, String)],
    count: impl Fn(&Service, &str) -> usize,
) {
    let svc = Service::start(store).await;
    let count = |prefix: &str| count(&svc, prefix);
    let mut c = svc.client().await;
    let (alice, bob) = (TenantId::new(), TenantId::new());
    let bytes = b"%PDF-1.7 the same contract".to_vec();
    let mut ids = Vec::new();
    for tenant in [alice, alice, bob] {
        let id = create(&mut c, tenant, "contract").await;
        upload(&mut c, tenant, parts(start(&id, "application/pdf"), vec![bytes.clone()])).await.unwrap();
        ids.push((tenant, id));
    }
    // Two documents of one tenant share one object; the other tenant has its own.
    assert_eq!(count("blobs/"), 2);
    assert_eq!(count(&format!("blobs/{}/", alice.as_uuid())), 1);

    // Retention and a legal hold refuse a hard delete, naming the rule.
    let (tenant, first) = &ids[0];
    let until = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 };
    let retain = pb::SetRetentionRequest { document_id: first.clone(), retain_until: Some(until), options: None };
    c.set_retention(req(*tenant, retain)).await.unwrap();
    let hard = |id: &str| pb::DeleteDocumentRequest { document_id: id.into(), hard_delete: true, options: None };
    let refused = c.delete_document(req(*tenant, hard(first))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("retained until"), "{}", refused.message());
    let (_, second) = &ids[1];
    let hold = pb::LegalHoldRequest { document_id: second.clone(), reason: "case 12".into(), options: None };
    c.place_legal_hold(req(alice, hold.clone())).await.unwrap();
    let held = c.delete_document(req(alice, hard(second))).await.unwrap_err();
    assert!(held.message().contains("legal hold (case 12)"), "{}", held.message());
    c.release_legal_hold(req(alice, hold)).await.unwrap();

    // Bob deletes his for good: his object goes after the grace period; Alice's stays.
    let (_, bobs) = &ids[2];
    c.delete_document(req(bob, hard(bobs))).await.unwrap();
    wait_until(|| count(&format!("blobs/{}/", bob.as_uuid())) == 0).await;
    assert_eq!(count("blobs/"), 1);
    let gone = c.get_document(req(bob, pb::GetDocumentRequest { document_id: bobs.clone() })).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // One of Alice's two goes; the other still references the object, which stays.
    c.delete_document(req(alice, hard(second))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(download(&mut c, alice, whole(first)).await.unwrap().0, bytes);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_mid_upload_leaves_no_version() {
    let svc = Service::start(&[]).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "interrupted").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // Past the single-PUT size, so bytes are on their way to staging when the client goes.
    let first = parts(start(&id, ""), vec![vec![1; 3 << 20], vec![2; 3 << 20], vec![3; 3 << 20]]);
    for m in first {
        tx.send(m).await.unwrap();
    }
    let call = {
        let mut c = c.clone();
        tokio::spawn(
            async move { c.upload_content(req(tenant, tokio_stream::wrappers::ReceiverStream::new(rx))).await },
        )
    };
    wait_until(|| !svc.files("staging").is_empty()).await;
    call.abort();
    drop(tx);
    let doc = c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id })).await.unwrap().into_inner();
    assert!(doc.current.is_none());
    wait_until(|| svc.files("staging").is_empty()).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_multipart_upload_and_ranged_download() {
    let s3 = cim_testkit::s3::MotoS3::start();
    s3.create_bucket("cim-docs");
    let svc = Service::start(&s3_vars(&s3, "s3://cim-docs/test")).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "big").await;
    // 20 MiB in 1 MiB messages: above the single-PUT size, so the parts path runs.
    let body: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let chunks = body.chunks(1024 * 1024).map(<[u8]>::to_vec).collect();
    let done = upload(&mut c, tenant, parts(start(&id, "application/octet-stream"), chunks)).await.unwrap();
    assert_eq!(done.content_cid, cid_of(&blake3::hash(&body)));
    let (bytes, info) = download(&mut c, tenant, whole(&id)).await.unwrap();
    assert_eq!((bytes.len(), info.size), (body.len(), body.len() as u64));
    assert!(bytes == body, "downloaded bytes differ");
    let tail = pb::DownloadContentRequest { document_id: id, offset: body.len() as u64 - 10, ..Default::default() };
    assert_eq!(download(&mut c, tenant, tail).await.unwrap().0, body[body.len() - 10..]);
    // One content object, nothing left in staging; beside them only the readiness check's
    // marker (`cim_objects::READY_MARKER`), under the store's prefix like everything else.
    let under = |prefix: &str| s3.count_objects_under("cim-docs", prefix);
    assert_eq!((under("test/blobs/"), under("test/staging/")), (1, 0));
    assert_eq!((under(&format!("test/{}", cim_objects::READY_MARKER)), s3.count_objects("cim-docs")), (1, 2));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_ids_are_what_an_independent_multiformats_implementation_computes() {
    let svc = Service::start(&[]).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let samples: Vec<Vec<u8>> = vec![
        b"hello world".to_vec(),
        "Grüße, 世界 \u{1F600}".as_bytes().to_vec(),
        (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
    ];
    let dir = std::env::temp_dir().join(unique("cids"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ours = Vec::new();
    for (i, bytes) in samples.iter().enumerate() {
        let id = create(&mut c, tenant, "sample").await;
        let chunks = bytes.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        ours.push(upload(&mut c, tenant, parts(start(&id, ""), chunks)).await.unwrap().content_cid);
        std::fs::write(dir.join(i.to_string()), bytes).unwrap();
    }
    // Python's multiformats and blake3 packages (tests/python/requirements.txt).
    let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys, blake3\nfrom multiformats import CID, multihash\nfor p in sys.argv[1:]:\n    d = open(p, 'rb').read()\n    print(CID('base32', 1, 'raw', multihash.wrap(blake3.blake3(d).digest(), 'blake3')))";
    let paths: Vec<String> = (0..samples.len()).map(|i| dir.join(i.to_string()).display().to_string()).collect();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(&paths)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (pip install -r tests/python/requirements.txt)"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(ours, theirs);
    let _ = std::fs::remove_dir_all(dir);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_refused_after_the_bytes_were_stored_leaves_an_orphan_the_sweeper_collects() {
    let svc = Service::start(&[]).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "race").await;
    // The bytes are stored and promoted, then the command is refused: the document is at
    // version 1, not 7.
    let mut stale = start(&id, "");
    stale.options =
        Some(cim_proto::common::CommandOptions { expected_version: Some(7), idempotency_key: String::new() });
    let refused = upload(&mut c, tenant, parts(stale, vec![b"orphan bytes".to_vec()])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let doc = c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id })).await.unwrap().into_inner();
    assert!(doc.current.is_none());
    assert_eq!(svc.files("blobs").len(), 1, "the orphan is there until the grace period ends");
    wait_until(|| svc.files("blobs").is_empty()).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_object_store_is_unavailable_and_leaves_nothing_visible() {
    let s3 = cim_testkit::s3::MotoS3::start();
    s3.create_bucket("cim-down");
    let mut vars = s3_vars(&s3, "s3://cim-down");
    vars.push(("CIM_CONNECT_TIMEOUT_MS", "500".into()));
    let svc = Service::start(&vars).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "offline").await;
    drop(s3);
    let failed = upload(&mut c, tenant, parts(start(&id, ""), vec![b"nowhere to go".to_vec()])).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("object store s3://cim-down"), "{}", failed.message());
    let doc = c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id })).await.unwrap().into_inner();
    assert!(doc.current.is_none());
    svc.stop().await;
}

/// The `cim-document` binary, killed with SIGKILL while an upload streams in: after a restart no
/// version is visible, and the sweeper removes what the upload left in staging.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_upload_leaves_no_version_and_the_staging_is_swept() {
    use std::process::{Command, Stdio};
    // Its own database: the binary uses the schema `document`, which a running CIM may own.
    let admin = cim_testkit::domain::database_url();
    let database = unique("dockill");
    let admin_pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin_pool).await.unwrap();
    let url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let objects = std::env::temp_dir().join(unique("killobjects"));
    let prefix = unique("p");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (grpc, admin_addr) = (free(), free());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_cim-document"))
            .env_clear()
            .env("CIM_DATABASE_URL", &url)
            .env("CIM_NATS_URL", cim_testkit::domain::nats_url())
            .env("CIM_SUBJECT_PREFIX", &prefix)
            .env("CIM_DOCUMENT_ADDR", grpc.to_string())
            .env("CIM_DOCUMENT_ADMIN_ADDR", admin_addr.to_string())
            .env("CIM_OBJECT_STORE_URL", objects.display().to_string())
            .env("CIM_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ready = || async {
        for _ in 0..200 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(admin_addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply).await;
                if reply.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cim-document never became ready");
    };
    let mut child = spawn();
    ready().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut c = DocumentServiceClient::new(channel);
    let tenant = TenantId::new();
    let id = create(&mut c, tenant, "killed").await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let call = {
        let mut c = c.clone();
        tokio::spawn(
            async move { c.upload_content(req(tenant, tokio_stream::wrappers::ReceiverStream::new(rx))).await },
        )
    };
    for m in parts(start(&id, ""), (0..12).map(|i| vec![i; 1 << 20]).collect()) {
        tx.send(m).await.unwrap();
    }
    // Past 8 MiB the upload is a multipart file in staging; then the process dies.
    let staged = |dir: &std::path::Path| {
        let mut stack = vec![dir.join("staging")];
        let mut found = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.path().is_dir() { stack.push(e.path()) } else { found += 1 }
            }
        }
        found
    };
    wait_until(|| staged(&objects) > 0).await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(call.await.unwrap().is_err(), "the interrupted upload must not succeed");

    let mut child = spawn();
    ready().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut c = DocumentServiceClient::new(channel);
    let doc = c.get_document(req(tenant, pb::GetDocumentRequest { document_id: id })).await.unwrap().into_inner();
    assert!(doc.current.is_none(), "no version after the crash: {doc:?}");
    assert!(staged(&objects) > 0, "the killed upload left its staging file");

    // The sweeper (run here over the same database and directory) removes it after the grace.
    let pool = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: url.clone(),
        schema: "document".into(),
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        application_name: "test".into(),
    })
    .await
    .unwrap();
    let settings = cim_runtime::config::ObjectStoreSettings {
        location: cim_runtime::config::ObjectLocation::Local(objects.clone()),
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_credentials: None,
    };
    let store = cim_objects::Objects::open(&settings, Duration::from_secs(5)).unwrap();
    let content = cim_document::content::ContentStore::new(&store, 1 << 30, std::fs::canonicalize(&objects).ok());
    let sweeper = cim_document::sweeper::Sweeper {
        pool: pool.clone(),
        content,
        grace: Duration::from_secs(1),
        interval: Duration::from_secs(60),
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let swept = sweeper.sweep().await.unwrap();
    assert!(swept.staging >= 1, "{swept:?}");
    assert_eq!(staged(&objects), 0);

    child.kill().unwrap();
    let _ = child.wait();
    pool.close().await;
    let js = async_nats::jetstream::new(async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap());
    let prefix: cim_core::SubjectPrefix = prefix.parse().unwrap();
    let _ = js.delete_stream(prefix.stream_name(cim_core::Domain::Document)).await;
    let _ = js.delete_stream(prefix.dlq_stream_name()).await;
    let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin_pool).await.unwrap();
    let _ = std::fs::remove_dir_all(objects);
}

/// The sweeper never takes bytes a committed version needs, even racing uploads of the same
/// bytes: with a 25 ms grace and the sweeper running flat out, uploads of one content keep
/// coming while other documents holding it are deleted for good. An upload's pin may wait for
/// the sweeper deleting that content (and put the bytes back), or the sweeper may take the
/// content between the pin and the commit (the version's foreign key refuses the commit and the
/// upload promotes again from its staged copy). An upload may give up (UNAVAILABLE, nothing
/// committed), but every one that succeeded must download.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_racing_uploads_of_the_same_bytes_never_loses_a_committed_version() {
    let svc = Service::start(&[]).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let settings = cim_runtime::config::ObjectStoreSettings {
        location: cim_runtime::config::ObjectLocation::Local(svc.objects.clone()),
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_credentials: None,
    };
    let store = cim_objects::Objects::open(&settings, Duration::from_secs(5)).unwrap();
    let sweeper = cim_document::sweeper::Sweeper {
        pool: svc.running.pool.clone(),
        content: cim_document::content::ContentStore::new(&store, 1 << 30, std::fs::canonicalize(&svc.objects).ok()),
        // Short enough that content a document just lost becomes collectable while the next
        // upload of the same bytes arrives (the pauses below sweep across that moment).
        grace: Duration::from_millis(25),
        interval: Duration::ZERO,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut passes, mut collected) = (0u32, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                collected += sweeper.sweep().await.unwrap().blobs;
                passes += 1;
            }
            (passes, collected)
        })
    };
    let hard = |id: &str| pb::DeleteDocumentRequest { document_id: id.into(), hard_delete: true, options: None };
    let mut kept = Vec::new();
    let mut refused = 0;
    for i in 0..40u64 {
        // Each round its own content: one document takes it and is deleted for good (the
        // content unreferenced)...
        let bytes = format!("contract {i}, uploaded twice").into_bytes();
        let doomed = create(&mut c, tenant, "doomed").await;
        if upload(&mut c, tenant, parts(start(&doomed, ""), vec![bytes.clone()])).await.is_ok() {
            c.delete_document(req(tenant, hard(&doomed))).await.unwrap();
        }
        // ...and, a moment later (before, around or after the grace), another uploads the same
        // bytes.
        tokio::time::sleep(Duration::from_millis((i % 8) * 7)).await;
        let keeper = create(&mut c, tenant, "keeper").await;
        match upload(&mut c, tenant, parts(start(&keeper, ""), vec![bytes.clone()])).await {
            Ok(_) => kept.push((keeper, bytes)),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                refused += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (passes, collected) = sweeping.await.unwrap();
    assert!(passes > 10, "the sweeper ran {passes} passes");
    // The content really went and came back in many rounds: collected after the delete, put
    // back by the next upload of the same bytes.
    assert!(collected >= 5, "the sweeper collected content {collected} times in {passes} passes");
    assert!(kept.len() >= 30, "{refused} of 40 uploads gave up");
    for (id, bytes) in &kept {
        let (got, _) =
            download(&mut c, tenant, whole(id)).await.unwrap_or_else(|e| panic!("version of {id} lost: {e:?}"));
        assert_eq!(&got, bytes);
    }
    svc.stop().await;
}
