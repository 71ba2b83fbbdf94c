"""Every REST route under /api/ (PROTOCOL §4)."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.attachments import api as attachments
from apps.core.api import api_not_found
from apps.integrations import api as integrations
from apps.messaging import api as messaging
from apps.messaging import api_threads as threads
from apps.moderation import api as moderation
from apps.notifications import api as notifications
from apps.rooms import api as rooms
from apps.users import api as users
from apps.users import tokens_api

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script from its own URL, and our template takes its
    # inline style to a file: nothing inline (apps.web.csp).
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="web/swagger_ui.html"),
        name="api-docs",
    ),
    # People and authentication.
    path("users/", users.UsersApi.as_view(), name="users"),
    path("auth/token/", users.TokenApi.as_view(), name="auth-token"),
    path("me/", users.MeApi.as_view(), name="me"),
    path("me/export/", messaging.MeExportApi.as_view(), name="me-export"),
    path("blocks/", users.BlocksApi.as_view(), name="blocks"),
    path("blocks/<int:user_id>/", users.BlockDetailApi.as_view(), name="block"),
    # Rooms.
    path("rooms/", rooms.RoomsApi.as_view(), name="rooms"),
    path("rooms/direct/", rooms.DirectRoomApi.as_view(), name="rooms-direct"),
    path("rooms/<int:room_id>/", rooms.RoomDetailApi.as_view(), name="room"),
    path("rooms/<int:room_id>/join/", rooms.RoomJoinApi.as_view(), name="room-join"),
    path("rooms/<int:room_id>/leave/", rooms.RoomLeaveApi.as_view(), name="room-leave"),
    path("rooms/<int:room_id>/invite/", rooms.RoomInviteApi.as_view(), name="room-invite"),
    path(
        "rooms/<int:room_id>/membership/",
        notifications.MembershipLevelApi.as_view(),
        name="room-membership",
    ),
    path("rooms/<int:room_id>/read/", rooms.RoomReadApi.as_view(), name="room-read"),
    path("rooms/<int:room_id>/events/", rooms.RoomEventsApi.as_view(), name="room-events"),
    path("rooms/<int:room_id>/members/", rooms.MembersApi.as_view(), name="room-members"),
    path(
        "rooms/<int:room_id>/members/<int:user_id>/ban/",
        rooms.MemberBanApi.as_view(),
        name="member-ban",
    ),
    path(
        "rooms/<int:room_id>/members/<int:user_id>/unban/",
        rooms.MemberUnbanApi.as_view(),
        name="member-unban",
    ),
    path(
        "rooms/<int:room_id>/members/<int:user_id>/mute/",
        rooms.MemberMuteApi.as_view(),
        name="member-mute",
    ),
    path(
        "rooms/<int:room_id>/members/<int:user_id>/kick/",
        rooms.MemberKickApi.as_view(),
        name="member-kick",
    ),
    path(
        "rooms/<int:room_id>/members/<int:user_id>/role/",
        rooms.MemberRoleApi.as_view(),
        name="member-role",
    ),
    # Messages.
    path(
        "rooms/<int:room_id>/messages/", messaging.RoomMessagesApi.as_view(), name="room-messages"
    ),
    path("messages/<int:message_id>/", messaging.MessageDetailApi.as_view(), name="message"),
    path("messages/<int:message_id>/thread/", threads.ThreadApi.as_view(), name="message-thread"),
    path(
        "messages/<int:message_id>/thread/read/",
        threads.ThreadReadApi.as_view(),
        name="message-thread-read",
    ),
    path("messages/<int:message_id>/follow/", threads.FollowApi.as_view(), name="message-follow"),
    path("threads/", threads.ThreadsApi.as_view(), name="threads"),
    path("search/", threads.SearchApi.as_view(), name="search"),
    path(
        "messages/<int:message_id>/reactions/",
        messaging.MessageReactionsApi.as_view(),
        name="message-reactions",
    ),
    path(
        "messages/<int:message_id>/report/",
        moderation.MessageReportApi.as_view(),
        name="message-report",
    ),
    path("reports/", moderation.ReportsApi.as_view(), name="reports"),
    path(
        "reports/<int:report_id>/resolve/",
        moderation.ReportResolveApi.as_view(),
        name="report-resolve",
    ),
    path("notifications/", notifications.NotificationsApi.as_view(), name="notifications"),
    path(
        "notifications/read/",
        notifications.NotificationsReadApi.as_view(),
        name="notifications-read",
    ),
    path(
        "notifications/<int:notification_id>/read/",
        notifications.NotificationReadApi.as_view(),
        name="notification-read",
    ),
    # Attachments (PROTOCOL §8); apps.attachments.services.path spells the download paths.
    path("uploads/", attachments.UploadsApi.as_view(), name="uploads"),
    path("uploads/<uuid:upload_id>/", attachments.UploadDetailApi.as_view(), name="upload"),
    path(
        "uploads/<uuid:upload_id>/file/",
        attachments.UploadDownloadApi.as_view(),
        name="upload-file",
    ),
    path(
        "uploads/<uuid:upload_id>/thumbnail/",
        attachments.UploadThumbnailApi.as_view(),
        name="upload-thumbnail",
    ),
    # Integrations (PROTOCOL §10): tokens, bots, webhooks.
    path("tokens/", tokens_api.TokensApi.as_view(), name="tokens"),
    path("tokens/<int:token_id>/", tokens_api.TokenDetailApi.as_view(), name="token"),
    path("bots/", tokens_api.BotsApi.as_view(), name="bots"),
    path("bots/<int:bot_id>/", tokens_api.BotDetailApi.as_view(), name="bot"),
    path(
        "rooms/<int:room_id>/webhooks/",
        integrations.RoomWebhooksApi.as_view(),
        name="room-webhooks",
    ),
    path(
        "rooms/<int:room_id>/webhooks/<int:hook_id>/",
        integrations.RoomWebhookDetailApi.as_view(),
        name="room-webhook",
    ),
    path("hooks/<str:key>/", integrations.IncomingHookApi.as_view(), name="incoming-hook"),
    path("webhooks/", integrations.WebhooksApi.as_view(), name="webhooks"),
    path("webhooks/<int:webhook_id>/", integrations.WebhookDetailApi.as_view(), name="webhook"),
    path(
        "webhooks/<int:webhook_id>/replay/",
        integrations.WebhookReplayApi.as_view(),
        name="webhook-replay",
    ),
    # Last: any other path under /api/ ending in a slash gets the contract's JSON 404.
    re_path(r"^.*/$", api_not_found),
]
