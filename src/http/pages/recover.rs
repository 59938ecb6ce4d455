//! `POST /ui/recover`: the Recover form of the alerts and target pages. An admin (the login
//! cookie) on a same-origin request; the note is required and the form's confirm box ticked.
//! Calls the one recovery operation (`recovery::recover_by_hand`), then shows the target's page
//! with the new event.

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{error_page, Viewer};
use crate::http::{Admin, ApiContext, Error};
use crate::recovery::{self, ManualRecovery, ManualTarget};

#[derive(Debug, Deserialize)]
pub struct RecoverForm {
    kind: String,
    id: uuid::Uuid,
    note: String,
    /// The form's "I confirm" box; absent when unticked.
    confirm: Option<String>,
    /// Generated with the page: submitting twice recovers once.
    request_id: String,
}

pub async fn recover(
    State(ctx): State<ApiContext>,
    admin: Result<Admin, Error>,
    Form(form): Form<RecoverForm>,
) -> Response {
    let viewer = Viewer {
        name: admin.as_ref().ok().map(|admin| admin.name.clone()),
        admin: admin.is_ok(),
    };
    match run(&ctx, admin, form).await {
        Ok(location) => Redirect::to(&location).into_response(),
        Err(error) => error_page(&ctx, &viewer, error),
    }
}

async fn run(
    ctx: &ApiContext,
    admin: Result<Admin, Error>,
    form: RecoverForm,
) -> Result<String, Error> {
    let admin = admin?;
    if form.confirm.is_none() {
        return Err(Error::BadRequest(
            "tick the box to confirm the recovery".into(),
        ));
    }
    let target = match form.kind.as_str() {
        "job" => ManualTarget::Job(form.id),
        "variant" => ManualTarget::Variant(form.id),
        other => return Err(Error::BadRequest(format!("unknown kind \"{other}\""))),
    };
    let request = ManualRecovery {
        target,
        note: form.note,
        actor: admin.name,
        to_status: None,
        event_id: Some(recovery::request_event_id(&form.request_id)),
    };
    let recovered = crate::http::recover::recover_once(ctx, &request).await?;
    Ok(format!(
        "{}/targets/{}/{}#seq-{}",
        ctx.base_path, form.kind, form.id, recovered.event.seq
    ))
}
