# The chat server image: daphne serving the ASGI app, as a non-root user.
# The same image runs the Celery worker, beat and Kafka consumers with another command
# (docs/operations.md). Every run-time setting is an environment variable (README, Settings).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN groupadd --system chat && useradd --system --gid chat --home-dir /app --no-create-home chat

COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY --chown=chat:chat . .
# Static files are collected at build time and served by WhiteNoise.
RUN DEBUG=false SECRET_KEY=collectstatic-only-not-a-secret python manage.py collectstatic --noinput \
    && mkdir -p /app/var && chown chat:chat /app/var

USER chat
ENV CHAT_ENV=production \
    DEBUG=false \
    BIND=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT','8000'), timeout=2)"
# Run migrations as a separate release step: `python manage.py migrate && python manage.py kafka_topics`.
# One server process per core (CHAT_WORKERS overrides), all on $PORT: chatproject/workers.py.
CMD ["python", "-m", "chatproject.serve", "--workers", "auto"]
