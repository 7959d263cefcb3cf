// stalwart-jmap: runs the `stalwart-lite` crate (SMTP/LMTP/IMAP/HTTP listeners, stores,
// queue, push services) and serves the JMAP endpoints that the lite fork's HTTP router
// dropped: GET /.well-known/jmap, GET /jmap/session, POST /jmap/, GET /jmap/download/..,
// POST /jmap/upload/.., GET /jmap/eventsource, GET /jmap/ws. Every other HTTP path goes to
// the crate's own router (management API, healthz, ...).
use hyper::{Method, StatusCode, body, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use stalwart_lib as trc;
use stalwart_lib::Collector;
use stalwart_lib::common::{
    Inner, Server, config::server::ServerProtocol, core::BuildServer, ipc::PushEvent,
    listener::{SessionData, SessionManager, SessionStream}, manager::boot::BootManager,
};
use stalwart_lib::directory::Permission;
use stalwart_lib::http::{auth::authenticate::Authenticator, management::ToManageHttpResponse, request::ParseHttp};
use stalwart_lib::http_proto::{
    DownloadResponse, HttpContext, HttpRequest, HttpResponse, HttpSessionData, JsonProblemResponse,
    ToHttpResponse, request::fetch_body,
};
use stalwart_lib::jmap::blob::{download::BlobDownload, upload::BlobUpload};
use stalwart_lib::types::{blob::BlobId, id::Id};
use std::str::FromStr;
use stalwart_lib::imap::core::ImapSessionManager;
use stalwart_lib::jmap::api::{
    ToJmapHttpResponse, event_source::EventSourceHandler, request::RequestHandler, session::SessionHandler,
};
use stalwart_lib::jmap::websocket::upgrade::WebSocketUpgrade;
use stalwart_lib::jmap_proto::request::Request;
use stalwart_lib::services::{StartServices, broadcast::subscriber::spawn_broadcast_subscriber};
use stalwart_lib::smtp::StartQueueManager;
use stalwart_lib::utils::wait_for_shutdown;
use std::{sync::Arc, time::Duration};

#[global_allocator]
static GLOBAL: jemallocator::Jemalloc = jemallocator::Jemalloc;

#[derive(Clone)]
struct JmapHttp {
    inner: Arc<Inner>,
}

async fn route(server: &Server, mut req: HttpRequest, session: HttpSessionData) -> trc::Result<HttpResponse> {
    let path = req.uri().path().to_string();
    let mut parts = path.split('/').skip(1);
    match (parts.next().unwrap_or_default(), parts.next().unwrap_or_default()) {
        (".well-known", "jmap") => Ok(HttpResponse::new(StatusCode::TEMPORARY_REDIRECT)
            .with_no_cache()
            .with_location("/jmap/session")),
        ("jmap", sub) => {
            let method = req.method().clone();
            if method == Method::OPTIONS {
                return Ok(JsonProblemResponse(StatusCode::NO_CONTENT).into_http_response());
            }
            let (_in_flight, token) = server.authenticate_headers(&req, &session, false).await?;
            match (sub, method) {
                ("", Method::POST) => {
                    let max = if token.has_permission(Permission::UnlimitedUploads) { 0 } else { server.core.jmap.upload_max_size };
                    let bytes = fetch_body(&mut req, max, session.session_id)
                        .await
                        .ok_or_else(|| trc::LimitEvent::SizeRequest.into_err())?;
                    let request = Request::parse(&bytes, server.core.jmap.request_max_calls, server.core.jmap.request_max_size)?;
                    Ok(ToJmapHttpResponse::into_http_response(server.handle_jmap_request(request, token, &session).await))
                }
                ("session", Method::GET) => {
                    let url = HttpContext::new(&session, &req).resolve_response_url(server).await;
                    server.handle_session_resource(url, token).await.map(ToJmapHttpResponse::into_http_response)
                }
                ("download", Method::GET) => {
                    let (Some(_account), Some(blob_id), Some(name)) = (
                        parts.next().and_then(|p| Id::from_str(p).ok()),
                        parts.next().and_then(BlobId::from_base32),
                        parts.next(),
                    ) else {
                        return Err(trc::ResourceEvent::NotFound.into_err());
                    };
                    let content_type = req.uri().query()
                        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "accept").map(|(_, v)| v.into_owned()))
                        .unwrap_or_else(|| "application/octet-stream".to_string());
                    match server.blob_download(&blob_id, &token).await? {
                        Some(blob) => Ok(DownloadResponse { filename: name.to_string(), content_type, blob }.into_http_response()),
                        None => Err(trc::ResourceEvent::NotFound.into_err()),
                    }
                }
                ("upload", Method::POST) => {
                    let account_id = parts.next().and_then(|p| Id::from_str(p).ok())
                        .ok_or_else(|| trc::ResourceEvent::NotFound.into_err())?;
                    let max = if token.has_permission(Permission::UnlimitedUploads) { 0 } else { server.core.jmap.upload_max_size };
                    let content_type = req.headers().get(hyper::header::CONTENT_TYPE)
                        .and_then(|h| h.to_str().ok()).unwrap_or("application/octet-stream").to_string();
                    let bytes = fetch_body(&mut req, max, session.session_id)
                        .await
                        .ok_or_else(|| trc::LimitEvent::SizeUpload.into_err())?;
                    Ok(server.blob_upload(account_id, &content_type, &bytes, token).await?.into_http_response())
                }
                ("eventsource", Method::GET) => server.handle_event_source(req, token).await,
                ("ws", Method::GET) => server.upgrade_websocket_connection(req, token, session).await,
                _ => Err(trc::ResourceEvent::NotFound.into_err()),
            }
        }
        _ => server.parse_http_request(req, session).await,
    }
}

async fn serve<T: SessionStream>(inner: Arc<Inner>, session: SessionData<T>) {
    let _in_flight = session.in_flight;
    let is_tls = session.stream.is_tls();
    let svc = service_fn(|req: hyper::Request<body::Incoming>| {
        let instance = session.instance.clone();
        let inner = inner.clone();
        async move {
            let server = inner.build_server();
            let sd = HttpSessionData {
                instance,
                local_ip: session.local_ip,
                local_port: session.local_port,
                remote_ip: session.remote_ip,
                remote_port: session.remote_port,
                is_tls,
                session_id: session.session_id,
            };
            let response = match Box::pin(route(&server, req, sd)).await {
                Ok(r) => r,
                Err(err) => {
                    let r = (&err).into_http_response();
                    trc::error!(err.span_id(session.session_id));
                    r
                }
            };
            let mut response = response.build();
            for (h, v) in &server.core.jmap.http_headers {
                response.headers_mut().insert(h.clone(), v.clone());
            }
            Ok::<_, hyper::Error>(response)
        }
    });
    if let Err(e) = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(session.stream), svc).with_upgrades().await {
        trc::event!(Http(trc::HttpEvent::Error), SpanId = session.session_id, Reason = e.to_string());
    }
}

impl SessionManager for JmapHttp {
    fn handle<T: SessionStream>(self, session: SessionData<T>) -> impl Future<Output = ()> + Send {
        serve(self.inner, session)
    }
    #[allow(clippy::manual_async_fn)]
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async { let _ = self.inner.ipc.push_tx.send(PushEvent::Stop).await; }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut init = Box::pin(BootManager::init()).await;
    if let Err(err) = stalwart_lib::migration::try_migrate(&init.inner.build_server()).await {
        trc::event!(Server(trc::ServerEvent::StartupError), Details = "database migration failed", Reason = err);
        return Ok(());
    }
    init.start_services().await;
    init.start_queue_manager();
    init.config.log_errors();
    init.config.log_warnings();
    let (shutdown_tx, shutdown_rx) = init.servers.spawn(|server, acceptor, shutdown_rx| match &server.protocol {
        ServerProtocol::Smtp | ServerProtocol::Lmtp => server.spawn(
            stalwart_lib::smtp::core::SmtpSessionManager::new(init.inner.clone()), init.inner.clone(), acceptor, shutdown_rx),
        ServerProtocol::Http => server.spawn(JmapHttp { inner: init.inner.clone() }, init.inner.clone(), acceptor, shutdown_rx),
        ServerProtocol::Imap => server.spawn(ImapSessionManager::new(init.inner.clone()), init.inner.clone(), acceptor, shutdown_rx),
        other => eprintln!("listener protocol {other:?} is not supported by stalwart-lite; ignored"),
    });
    spawn_broadcast_subscriber(init.inner, shutdown_rx);
    wait_for_shutdown().await;
    Collector::shutdown();
    let _ = shutdown_tx.send(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
