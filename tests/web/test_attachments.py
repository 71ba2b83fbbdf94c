"""Attachments in the web client, in headless Chromium against a real daphne server and a
real Celery worker (the thumbnails): an image pasted by one user is seen by the other as a
thumbnail that opens the full image; a file picked with the button is a download link; a
file over the limit is refused with a clear message."""

import base64
import io

import pytest
from PIL import Image
from playwright.sync_api import expect

from apps.attachments.models import Upload
from tests import factories
from tests.support.processes import ServerProcess

from .conftest import in_thread, make_user, screenshot
from .test_browser import composer, open_room

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASTE = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/png" }));
  const event = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  document.getElementById("composer-input").dispatchEvent(event);
}"""


def png_b64(width, height) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (220, 120, 20)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def natural_width(locator) -> int:
    return locator.evaluate("(img) => img.complete ? img.naturalWidth : 0")


def test_a_pasted_image_reaches_the_other_user_as_a_thumbnail_that_opens_the_full_image(
    server, celery_worker, open_page
):
    def setup():
        alice, bob = make_user("alice"), make_user("bob")
        factories.make_room(alice, name="Photos", members=[bob])
        return alice, bob

    alice, bob = in_thread(setup)
    a = open_page(server, alice)
    b = open_page(server, bob)
    open_room(a, "Photos")
    open_room(b, "Photos")

    a.evaluate(PASTE, ["sunset.png", png_b64(900, 600)])
    pending = a.locator("#pending-files .pending-file")
    expect(pending).to_have_count(1)
    expect(pending).to_have_class("pending-file done")  # uploaded (progress went to 100%)
    expect(pending.locator("img.pending-preview")).to_have_attribute("src", lambda_re("^blob:"))
    composer(a).fill("look at this")
    a.get_by_role("button", name="Send").click()
    expect(a.locator("#pending-files")).to_be_hidden()

    thumb = b.locator("#messages li", has_text="look at this").locator("img.thumbnail")
    expect(thumb).to_have_count(1)
    # The worker makes the thumbnail; the page asks for it again and swaps it in.
    expect(thumb).to_have_attribute("src", lambda_re("/thumbnail/"), timeout=60000)
    b.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    assert natural_width(thumb) == 320
    b.get_by_role("button", name="Open image sunset.png").click()
    viewer = b.locator("#image-viewer")
    expect(viewer).to_be_visible()
    full = viewer.locator("img")
    expect(full).to_have_attribute("src", lambda_re("/file/"))
    b.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=full.element_handle())
    assert natural_width(full) == 900
    screenshot(b, "attachments-viewer")
    b.get_by_role("button", name="Close image").click()
    expect(viewer).to_be_hidden()

    # A file picked with the button: a download link on the other side.
    a.locator("#attach-input").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"the agenda\n"}]
    )
    expect(a.locator("#pending-files .pending-file.done")).to_have_count(1)
    a.get_by_role("button", name="Send").click()  # files alone, no text
    link = b.get_by_role("link", name="notes.txt")
    expect(link).to_have_attribute("href", lambda_re("/api/uploads/.*/file/"))
    assert b.errors == [] and a.errors == []


def lambda_re(fragment):
    import re

    return re.compile(fragment if fragment.startswith("^") else ".*" + fragment + ".*")


@pytest.fixture
def small_limit_server(child_env):
    """A server whose upload limit is 200 KiB (the page is told the same limit)."""
    proc = ServerProcess(dict(child_env, UPLOAD_MAX_BYTES=str(200 * 1024))).start()
    yield proc
    proc.stop()


def test_a_file_over_the_limit_is_refused_with_a_clear_message(small_limit_server, open_page):
    def setup():
        carol = make_user("carol")
        factories.make_room(carol, name="Files")
        return carol

    carol = in_thread(setup)
    page = open_page(small_limit_server, carol)
    open_room(page, "Files")
    page.locator("#attach-input").set_input_files(
        files=[
            {
                "name": "huge.bin",
                "mimeType": "application/octet-stream",
                "buffer": b"\0" * (300 * 1024),
            }
        ]
    )
    expect(page.locator("#attach-error")).to_have_text(
        "huge.bin is 300 KiB: files can be at most 200 KiB."
    )
    expect(page.locator("#pending-files .pending-file")).to_have_count(0)
    assert in_thread(lambda: Upload.objects.count()) == 0
