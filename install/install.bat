@echo off
rem Chat Diffusion installer for Windows: finds a 64-bit Python 3.10 to 3.14 (the py
rem launcher first, newest supported first) and runs install\install.py with the same
rem arguments (see docs\install.md). Double-clicked from Explorer, the window waits for
rem a key at the end so the result and the next steps stay readable.
setlocal EnableDelayedExpansion
set "HERE=%~dp0"
set "FROM_EXPLORER=0"
rem Explorer starts  cmd /c ""...\install.bat" "  : the script's name is in cmdcmdline
rem (delayed expansion keeps the quotes in it from breaking the comparison).
set "CMDLINE=%cmdcmdline%"
if /i not "!CMDLINE:%~nx0=!"=="!CMDLINE!" set "FROM_EXPLORER=1"
for %%V in (3.12 3.13 3.11 3.14 3.10) do (
    py -%%V-64 -c "import sys" >nul 2>nul
    if not errorlevel 1 (
        py -%%V-64 "%HERE%install.py" %*
        goto done
    )
)
python -c "import sys, struct; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 14) and struct.calcsize('P') == 8 else 1)" >nul 2>nul
if not errorlevel 1 (
    python "%HERE%install.py" %*
    goto done
)
echo Chat Diffusion needs a 64-bit Python 3.10 to 3.14, and none was found. 1>&2
echo Install Python 3.12 from https://www.python.org/downloads/ (64-bit; not the Microsoft Store's). 1>&2
cmd /c exit 1
:done
set "RC=%ERRORLEVEL%"
if "%FROM_EXPLORER%"=="1" (
    echo.
    pause
)
exit /b %RC%
