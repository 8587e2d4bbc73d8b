# sraq runtime image: orchestrator, dispatcher and worker pools (no GPU code; SGLang runs in its own image).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY intent intent
COPY orchestrator orchestrator
COPY workers workers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 sraq
USER sraq
WORKDIR /home/sraq
EXPOSE 9100
ENTRYPOINT ["sraq"]
CMD ["--help"]
