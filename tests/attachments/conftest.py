import io

import pytest
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from tests import factories


def png(width=64, height=48, color=(200, 30, 30), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width=800, height=600) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def post_upload(client, data: bytes, name="picture.png", content_type="image/png"):
    return client.post(
        "/api/uploads/", {"file": SimpleUploadedFile(name, data, content_type)}, format="multipart"
    )


def stored(name: str) -> bool:
    return bool(name) and storages["uploads"].exists(name)


def body_of(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


@pytest.fixture
def client(user):
    return factories.api_client(user)


@pytest.fixture
def uploaded(client):
    """upload(data=png(), name=...) -> the 201 body of a POST /api/uploads/ by `user`."""

    def _upload(data=None, name="picture.png", content_type="image/png"):
        response = post_upload(client, data if data is not None else png(), name, content_type)
        assert response.status_code == 201, response.content
        return response.json()

    return _upload
