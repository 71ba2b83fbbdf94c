"""REST for uploads (PROTOCOL §8): POST /api/uploads/, GET /api/uploads/{id}/, and the
authorized download view GET /api/uploads/{id}/file/ and /thumbnail/.

The download view answers only someone who may read the file (services.check_can_read): the
caller by session or token, or the user a signed link (?sig=, UPLOAD_URL_MAX_AGE) was made
for. On the filesystem it streams the file; on S3 it redirects to a short presigned URL.
"""

from __future__ import annotations

from django.http import FileResponse, HttpResponseRedirect
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from apps.core.api import ErrorSerializer
from apps.core.errors import ServiceError, not_found

from . import services
from .models import Upload
from .thumbnails import content_type_of

# Multipart framing around the file: a request this much over the limit is refused unread.
MULTIPART_SLACK = 64 * 1024


class UploadSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    size = serializers.IntegerField()
    content_type = serializers.CharField(help_text="Sniffed from the file's bytes.")
    url = serializers.CharField(help_text="A signed link, valid for UPLOAD_URL_MAX_AGE seconds.")
    thumbnail_url = serializers.CharField(
        allow_null=True, help_text="Images: null until the worker made it."
    )
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)


class UploadFileSerializer(serializers.Serializer):
    file = serializers.FileField()


class UploadsApi(GenericAPIView):
    """POST a file (multipart, field `file`); send its id in a message's `attachments`."""

    serializer_class = UploadFileSerializer
    queryset = Upload.objects.none()
    parser_classes = [MultiPartParser]
    rate_budget = "upload"  # apps.users.ratelimit: a bucket of its own, and the write bucket

    @extend_schema(
        request={"multipart/form-data": UploadFileSerializer},
        responses={
            201: UploadSerializer,
            400: ErrorSerializer,
            413: OpenApiResponse(ErrorSerializer, description="Over UPLOAD_MAX_BYTES"),
            415: OpenApiResponse(
                ErrorSerializer, description="A type not accepted (code `invalid`)"
            ),
            429: ErrorSerializer,
        },
    )
    def post(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        services.check_size(max(0, length - MULTIPART_SLACK))  # before reading the body
        upload = services.upload_create(owner=request.user, uploaded_file=request.FILES.get("file"))
        return Response(services.payload(upload, request.user), status=status.HTTP_201_CREATED)


class UploadDetailApi(GenericAPIView):
    """One upload, with fresh signed links (and its thumbnail once made): the uploader's, or
    one attached to a message the caller may read."""

    serializer_class = UploadSerializer
    queryset = Upload.objects.none()

    @extend_schema(responses={200: UploadSerializer, 404: ErrorSerializer})
    def get(self, request, upload_id):
        upload = services.check_can_read(services.get_upload(upload_id), request.user)
        return Response(services.payload(upload, request.user))


class UploadDownloadApi(GenericAPIView):
    """The file (kind "file") or its thumbnail: images inline, anything else as an attachment,
    never sniffed by the browser."""

    serializer_class = None
    queryset = Upload.objects.none()
    permission_classes = [AllowAny]  # a signed link needs no session; checked below
    kind = services.FILE

    @extend_schema(
        parameters=[OpenApiParameter("sig", str, description="A signed link's token")],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(str),
            302: OpenApiResponse(description="S3: the presigned URL"),
            401: ErrorSerializer,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
    )
    def get(self, request, upload_id):
        token = request.query_params.get("sig")
        upload = services.get_upload(upload_id)
        if token is not None:
            user = services.user_of_link(upload_id, self.kind, token)
        elif request.user.is_authenticated:
            user = request.user
        else:
            raise ServiceError("unauthenticated", "log in, or use a signed link")
        upload = services.check_can_read(upload, user)
        if self.kind == services.THUMBNAIL:
            if not upload.thumbnail:
                raise not_found("no thumbnail (yet)")
            name, content_type, inline = upload.thumbnail, content_type_of(upload.thumbnail), True
            filename = f"thumbnail-{upload.name}"
        else:
            name, content_type, inline = upload.file, upload.content_type, upload.is_image
            filename = upload.name
        disposition = content_disposition_header(not inline, filename)
        presigned = services.presigned_url(name, content_type=content_type, disposition=disposition)
        if presigned is not None:
            response = HttpResponseRedirect(presigned)
        else:
            try:
                handle = services.storage().open(name, "rb")
            except FileNotFoundError:
                raise not_found("file not found") from None
            response = FileResponse(handle, content_type=content_type)
            response["Content-Disposition"] = disposition
            response["Content-Length"] = str(services.storage().size(name))
        response["X-Content-Type-Options"] = "nosniff"
        # Opened on its own, the file is a sandboxed document that can run and load nothing.
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response["Cache-Control"] = "private, max-age=300"
        response["Cross-Origin-Resource-Policy"] = "same-origin"
        return response


class UploadThumbnailApi(UploadDownloadApi):
    kind = services.THUMBNAIL
