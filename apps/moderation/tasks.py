"""Periodic jobs of moderation (beat: REPORT_ERASE_SWEEP_SECONDS)."""

import logging

from celery import shared_task

from .services import report_bodies_erase

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def erase_report_bodies():
    """Erase the reported bodies kept by reports handled over REPORT_RETENTION_DAYS ago."""
    erased = report_bodies_erase()
    if erased:
        logger.info("erased the reported body of %d handled reports", erased)
    return erased
