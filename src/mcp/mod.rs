//! `taskmail mcp`: an account's mailbox and tasks as [MCP](https://modelcontextprotocol.io)
//! tools, served over stdio with the official Rust SDK (`rmcp`).
//!
//! An agent runtime starts `taskmail mcp --account NAME` as a child process and talks JSON-RPC
//! 2.0 on its stdin/stdout (`initialize`, `tools/list`, `tools/call`); logs go to stderr. The
//! tools ([`tools`]) are thin: each maps its JSON arguments onto the code the CLI verbs use
//! (`taskmail dispatch`, `task show`, `answer`, and the mailbox core for envelopes), so the MCP
//! surface and the CLI never disagree.
//!
//! While it runs, the server serves the account's dispatcher pipeline when nobody else does
//! (it takes the account's pipeline lock, as a waiting `taskmail dispatch` would): replies to
//! dispatched tasks are recorded in the store, so `get_task` sees acks, help requests and
//! results. If `taskmail run` already serves the account, that process records them and this
//! one only reads the shared store.
//!
//! Failures of a tool are tool results with `isError: true` and a text naming the problem and
//! the fix (the client's model reads them); only an unknown tool or malformed arguments are
//! JSON-RPC errors.

mod mailbox;
pub mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::{Account, Config};
use crate::daemon::Deps;
use crate::daemon::dispatcher::{self, NoAgent, PipelineLock};

/// Why a tool call failed: what went wrong and how to fix it (shown to the client's model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// A short machine code: `INVALID_ARGUMENT`, `NOT_FOUND`, `SEND_FAILED`, `UNAVAILABLE` ...
    pub code: String,
    /// One line: what went wrong.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl ToolError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> ToolError {
        ToolError {
            code: code.to_owned(),
            message: message.into(),
            fix: None,
        }
    }

    /// With a fix.
    #[must_use]
    pub fn fix(mut self, fix: impl Into<String>) -> ToolError {
        self.fix = Some(fix.into());
        self
    }

    /// A bad argument: `what` names it and what it must be.
    pub fn invalid(what: impl Into<String>) -> ToolError {
        ToolError::new("INVALID_ARGUMENT", what)
    }

    fn text(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{} ({}). Fix: {fix}", self.message, self.code),
            None => format!("{} ({})", self.message, self.code),
        }
    }

    fn into_result(self) -> CallToolResult {
        let mut result = CallToolResult::error(vec![ContentBlock::text(self.text())]);
        result.structured_content = Some(json!({
            "error": {"code": self.code, "message": self.message, "fix": self.fix}
        }));
        result
    }
}

impl From<crate::cli::Failure> for ToolError {
    fn from(failure: crate::cli::Failure) -> ToolError {
        let code = match failure.kind.as_str() {
            "usage" => "INVALID_ARGUMENT",
            "task" => "TASK",
            "send" => "SEND_FAILED",
            "config" => "CONFIG",
            "store" => "STORE",
            _ => "FAILED",
        };
        let fix = (!failure.details.is_empty()).then(|| failure.details.join("; "));
        ToolError {
            code: code.to_owned(),
            message: failure.message,
            fix,
        }
    }
}

impl From<crate::store::StoreError> for ToolError {
    fn from(error: crate::store::StoreError) -> ToolError {
        ToolError::new("STORE", crate::transport::smtp::error_chain(&error))
            .fix("check the state dir with: taskmail doctor")
    }
}

/// What every tool call may use.
#[derive(Debug)]
pub struct McpState {
    /// The validated config.
    pub config: Config,
    /// The account the tools act as.
    pub account: Account,
    /// The account's mailbox, opened by the first mailbox tool.
    mailbox: tokio::sync::OnceCell<crate::mailbox::Mailbox>,
}

impl McpState {
    /// Opens the account's store (one SQLite connection per call: calls may run at once).
    pub fn store(&self) -> Result<crate::store::Store, ToolError> {
        crate::store::Store::open(&self.config.state_dir().join(crate::store::FILE_NAME))
            .map_err(ToolError::from)
    }
}

/// The MCP server: [`ServerHandler`] over [`tools`].
#[derive(Debug, Clone)]
pub struct McpServer {
    state: Arc<McpState>,
}

impl McpServer {
    /// A server acting as `account` (a config account name).
    pub fn new(config: Config, account: Account) -> McpServer {
        McpServer {
            state: Arc::new(McpState {
                config,
                account,
                mailbox: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Runs one tool by name; `None` when there is no such tool.
    ///
    /// NOTE: a tool holds a store connection (not `Sync`) across its awaits, so it runs on a
    /// blocking thread of the runtime, one per call; calls may still run at once.
    pub async fn call(&self, name: &str, args: Value) -> Option<Result<Value, ToolError>> {
        let state = Arc::clone(&self.state);
        let name = name.to_owned();
        let joined = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(tools::call(&state, &name, &args))
        })
        .await;
        joined.unwrap_or_else(|e| {
            Some(Err(ToolError::new(
                "INTERNAL",
                format!("the tool stopped unexpectedly: {e}"),
            )
            .fix(
                "retry; report a bug with the server's stderr if it happens again",
            )))
        })
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("taskmail", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "taskmail: the mailbox and tasks of {} over ordinary email. check_inbox lists \
                 push frames (headers only, cheap); read_message fetches one body. \
                 dispatch_task sends a task to a worker address; poll get_task for its state \
                 and result; answer_help answers a task's help request.",
                self.state.account.email
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let Some(outcome) = self.call(&request.name, args).await else {
            return Err(ErrorData::invalid_params(
                format!(
                    "no tool '{}': call tools/list for the tool names",
                    request.name
                ),
                None,
            ));
        };
        let result = match outcome {
            Ok(value) => {
                let text = serde_json::to_string_pretty(&value).unwrap_or_default();
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                result.structured_content = Some(value);
                result
            }
            Err(error) => {
                tracing::info!(tool = %request.name, code = %error.code, message = %error.message, "tool failed");
                error.into_result()
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// Why the MCP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The stdio handshake failed.
    #[error("cannot start the MCP session on stdio: {0}")]
    Start(String),
    /// The session ended abnormally.
    #[error("the MCP session ended abnormally: {0}")]
    Session(String),
}

/// Serves the tools on stdin/stdout until the client closes stdin. Runs the account's
/// dispatcher pipeline in the background when no other process serves it (module docs).
pub async fn serve(config: Config, account: Account) -> Result<(), McpError> {
    crate::transport::init_crypto();
    let (stop, stopped) = oneshot::channel::<()>();
    let pipeline = start_pipeline(&config, &account, stopped).await;
    let server = McpServer::new(config, account);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Start(e.to_string()))?;
    let ended = running.waiting().await;
    let _ = stop.send(());
    if let Some(handle) = pipeline {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(6), handle).await;
    }
    ended
        .map(|_| ())
        .map_err(|e| McpError::Session(e.to_string()))
}

/// Starts the dispatcher-only pipeline of `account` if this process can take its lock.
async fn start_pipeline(
    config: &Config,
    account: &Account,
    stopped: oneshot::Receiver<()>,
) -> Option<tokio::task::JoinHandle<()>> {
    let lock = match PipelineLock::take(config.state_dir(), &account.name) {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => {
            tracing::info!(holder = %holder.describe(), "another process serves the account; reading the shared store");
            return None;
        }
        Err(error) => {
            tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot take the pipeline lock");
            return None;
        }
    };
    let store = crate::store::Store::open(&config.state_dir().join(crate::store::FILE_NAME));
    let deps = match Deps::connect(account, Arc::new(NoAgent)).await {
        Ok(deps) => deps,
        Err(error) => {
            tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot reach the mailbox; task replies are read by the next taskmail process of the account");
            return None;
        }
    };
    if let Ok(store) = &store
        && let Err(error) =
            dispatcher::ensure_cursor(store, &account.name, &*deps.mail, crate::clock::now()).await
    {
        tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot note where the mailbox is");
    }
    let config = config.clone();
    Some(tokio::spawn(async move {
        if let Err(error) = dispatcher::follow(&config, deps, lock, async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "the dispatcher pipeline stopped");
        }
    }))
}
