FROM alpine
RUN --mount=type=secret,id=pypi_token,required=true,mode=0444,uid=1000 true
RUN --mount=type=secret,id=pypi_token,required=true,uid=0 true
RUN --mount=type=secret,id=pypi_token,uid=1000 true
RUN --mount=type=secret,id=npm_token,target=/tmp/npmrc,uid=1000 true
RUN --mount=type=secret,id=token_prod,gid=50,uid=1000 true
RUN --mount=type=secret,id=unlisted,required true
RUN --mount=type=secret,id=token_dev true
