//! The mailbox tools (`send_message`, `check_inbox`, `read_message`, `reply`) over the mailbox
//! core ([`crate::mailbox`]).

use serde_json::Value;

use super::{McpState, ToolError};

fn unavailable() -> ToolError {
    ToolError::new("UNAVAILABLE", "the mailbox core is not built into this taskmail")
        .fix("use dispatch_task, get_task and answer_help")
}

pub(super) async fn send_message(_state: &McpState, _args: &Value) -> Result<Value, ToolError> {
    Err(unavailable())
}

pub(super) async fn check_inbox(_state: &McpState, _args: &Value) -> Result<Value, ToolError> {
    Err(unavailable())
}

pub(super) async fn read_message(_state: &McpState, _args: &Value) -> Result<Value, ToolError> {
    Err(unavailable())
}

pub(super) async fn reply(_state: &McpState, _args: &Value) -> Result<Value, ToolError> {
    Err(unavailable())
}
