@echo off
rem Chat Diffusion installer for Windows: finds a Python >= 3.10 (the py launcher first)
rem and runs install\install.py with the same arguments (see docs\install.md).
setlocal
set "HERE=%~dp0"
py -3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>nul
if not errorlevel 1 goto use_py
python -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>nul
if not errorlevel 1 goto use_python
echo Chat Diffusion needs Python 3.10 or newer, and none was found. 1>&2
echo Install it from https://www.python.org/downloads/ (tick "Add python.exe to PATH"). 1>&2
exit /b 1
:use_py
py -3 "%HERE%install.py" %*
exit /b %ERRORLEVEL%
:use_python
python "%HERE%install.py" %*
exit /b %ERRORLEVEL%
