"""What a Helix client asks first: the server's settings (GET /api/v1/config, no key needed, as
in Helix) and who the caller is (GET /api/v1/status), in Helix's shapes (ServerConfig, UserStatus)."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, url_for

from controlplane.accounts.auth import require_user
from controlplane.contract import helix_types as helix
from controlplane.contract.operations import documented

bp = Blueprint("server_info", __name__, url_prefix="/api/v1")


@bp.get("/config")
@documented("The server's settings a Helix client reads first", auth="public", responses={200: helix.ServerConfig})
def server_config():
    """`filestore_prefix` + "/" + a file's path (as sessions list them) is where the file is read;
    there is no billing (Stripe) nor front-end telemetry here."""
    viewer = url_for("filestore.viewer", path="x", _external=True)[:-len("/x")]
    return jsonify(filestore_prefix=viewer, stripe_enabled=False, sentry_dsn_frontend="", google_analytics_frontend="")


@bp.get("/status")
@require_user
@documented("Who the caller is", responses={200: helix.UserStatus})
def user_status():
    """Helix's UserStatus (admin, user, its billing config, empty here), with the caller's email and plan."""
    return jsonify(admin=bool(g.user.get("is_admin")), user=g.user["id"], email=g.user.get("email", ""),
                   plan=g.user.get("plan"), config={"stripe_subscription_active": False, "stripe_customer_id": "",
                                                    "stripe_subscription_id": ""})
